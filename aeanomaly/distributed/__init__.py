"""Scaling out: batch scoring on Ray (:mod:`.ray_engine`) and tf.distribute training strategies
(:mod:`.strategy`). Optional extra ``aeanomaly[distributed]``; importing this package imports neither
Ray nor TensorFlow (each module imports them inside its functions)."""
