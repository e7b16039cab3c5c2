"""Review workflow: the feedback database, the loop back into the model, and the web viewer.

:mod:`.db` and :mod:`.feedback` need only the standard library and numpy; :mod:`.app` needs Flask
(the ``[web]`` extra) and is imported only by ``aeanomaly serve``.
"""

from .db import FeedbackDB, FeedbackError, open_db
from .feedback import agreement_stats, confirmed_normal_reviews, confirmed_normals, export_dataset, reviewer_labels

__all__ = ["FeedbackDB", "FeedbackError", "agreement_stats", "confirmed_normal_reviews", "confirmed_normals",
           "export_dataset", "open_db", "reviewer_labels"]
