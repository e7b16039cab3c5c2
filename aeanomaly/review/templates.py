"""The review app's pages: small Jinja templates (autoescaped) and the viewer's script.

Kept as strings in a module so a wheel needs no package data.
"""

BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="csrf-token" content="{{ csrf_token() }}">
<title>{% block title %}aeanomaly review{% endblock %}</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;background:#111;color:#ddd}
a{color:#7cf} header{padding:8px 16px;background:#222;display:flex;gap:16px;align-items:center}
header h1{font-size:18px;margin:0} main{padding:12px 16px}
table{border-collapse:collapse} td,th{padding:3px 8px;border-bottom:1px solid #333;text-align:left}
tr.abnormal td.label{color:#f96} .badge{padding:1px 6px;border-radius:4px;background:#333}
.v-confirm{background:#264}.v-reject{background:#642}.v-normal{background:#246}
button{background:#345;color:#eee;border:1px solid #567;border-radius:4px;padding:3px 9px;cursor:pointer}
button.active{background:#6a4} .err{background:#511;padding:10px;border-radius:4px}
#stack{position:relative;display:inline-block;line-height:0;cursor:crosshair}
#stack img{position:absolute;left:0;top:0;width:100%;height:100%;image-rendering:pixelated}
#stack img#ct{position:relative} .pt{position:absolute;width:10px;height:10px;margin:-5px 0 0 -5px;
border:2px solid #0f0;border-radius:50%;pointer-events:none}
.panel{display:flex;gap:20px;align-items:flex-start;flex-wrap:wrap} .side{min-width:340px}
progress{width:300px} #lesions tr.here td{background:#233}
</style></head><body>
<header><h1><a href="{{ url_for('worklist') }}">aeanomaly review</a></h1>
<form method="post" action="{{ url_for('set_reviewer') }}" id="reviewer-form">
<input type="hidden" name="csrf_token" value="{{ csrf_token() }}">
<input type="hidden" name="next" value="{{ request.path }}">
<label>Reviewer <input name="reviewer" id="reviewer" value="{{ reviewer }}" maxlength="100" required></label>
<button type="submit">Set</button></form>
<span>bundle {{ bundle_name }}</span></header>
<main>{% block main %}{% endblock %}</main>
{% block scripts %}{% endblock %}
</body></html>"""

WORKLIST = """{% extends "base.html" %}{% block main %}
<form method="post" action="{{ url_for('upload') }}" enctype="multipart/form-data" id="upload-form">
<input type="hidden" name="csrf_token" value="{{ csrf_token() }}">
<input type="file" name="scan" id="upload-file" required> <button type="submit" id="upload-btn">Upload and score</button>
<small>NIfTI, MetaImage .mha, PNG/TIFF, .npy, or a zipped DICOM series; at most {{ max_upload_mb }} MB.</small>
</form>
<h2>Worklist ({{ scans|length }})</h2>
<table id="worklist"><tr><th>Scan</th><th>Score</th><th>Label</th><th>p-value</th><th>Lesions</th>
<th>Status</th><th>Review</th></tr>
{% for s in scans %}<tr class="{{ s.label or '' }}" data-id="{{ s.id }}">
<td><a href="{{ url_for('viewer', scan_id=s.id) }}">{{ s.name }}</a></td>
<td>{{ fmt(s.scan_score) }}</td><td class="label">{{ s.label or '' }}</td><td>{{ fmt(s.p_value) }}</td>
<td>{{ s.n_lesions if s.n_lesions is not none else '' }}</td>
<td class="status">{{ s.status }}{% if s.error %}: {{ s.error }}{% endif %}</td>
<td>{% if s.verdict %}<span class="badge v-{{ s.verdict }}">{{ s.verdict }}</span> {{ s.reviewer }}
{{ s.reviewed_at }}{% else %}unreviewed{% endif %}</td></tr>{% endfor %}
</table>{% endblock %}
{% block scripts %}{% if pending %}<script src="{{ url_for('script', name='worklist.js') }}"></script>{% endif %}
{% endblock %}"""

VIEWER = """{% extends "base.html" %}{% block title %}{{ scan.name }} · aeanomaly review{% endblock %}
{% block main %}
<h2>{{ scan.name }}</h2>
{% if scan.status != 'done' %}
<div id="progress-box" data-status-url="{{ url_for('scan_status', scan_id=scan.id) }}">
{% if scan.status == 'error' %}<p class="err" id="score-error">Could not score this scan: {{ scan.error }}</p>
{% else %}<p>Scoring… <span id="stage">{{ scan.status }}</span></p><progress id="progress" max="1" value="0"></progress>
{% endif %}</div>
{% else %}
<p id="summary">Score <b id="scan-score">{{ fmt(scan.scan_score) }}</b>, label <b id="scan-label">{{ scan.label }}</b>,
p-value {{ fmt(scan.p_value) }}, threshold {{ fmt(scan.threshold) }}; {{ scan.n_lesions }} lesion(s).
{% if scan.note %}<i>{{ scan.note }}</i>{% endif %}
<a href="{{ url_for('report', scan_id=scan.id) }}" id="report-link">Download report</a></p>
<div class="panel"><div>
<div id="stack" style="width:{{ view_w }}px;height:{{ view_h }}px">
<img id="ct" alt="CT slice"><img id="heat" alt=""><img id="contour" alt=""><div id="points"></div></div>
<div><input type="range" id="slice" min="0" max="{{ meta.shape[0] - 1 }}" value="{{ meta.top_slice }}" style="width:{{ view_w }}px">
<div>Slice <span id="slice-no"></span> (0–{{ meta.shape[0] - 1 }}) · score <span id="slice-score"></span>
· ↑/↓ or j/k: slices, n: next lesion</div>
<label>Window <select id="window">{% for w in windows %}<option value="{{ w }}" {{ 'selected' if w == meta.window }}>{{ w }}</option>{% endfor %}</select></label>
<label>Heatmap <input type="range" id="opacity" min="0" max="1" step="0.05" value="0.6"></label>
<label><input type="checkbox" id="show-contours" checked> contours</label>
<button id="mark-missed" type="button">Mark missed finding</button>
<div id="missed-form" hidden>Missed at slice <span id="mf-where"></span>: <input id="mf-note" placeholder="note" maxlength="2000">
<button id="mf-save" type="button">Save point</button> <button id="mf-cancel" type="button">Cancel</button></div>
<div id="message"></div></div></div>
<div class="side"><h3>Lesions</h3>
<table id="lesions"><tr><th>#</th><th>slices</th><th>Ø mm</th><th>area mm²</th><th>vol mm³</th><th>severity</th><th>verdict</th><th></th></tr>
{% for l in lesions %}<tr data-lesion="{{ l.lesion_id }}" data-z="{{ (l.z)|round|int }}" data-z0="{{ l.slice_start }}" data-z1="{{ l.slice_end }}">
<td><a href="#" class="jump">{{ l.lesion_id }}</a></td><td>{{ l.slice_start }}–{{ l.slice_end }}</td>
<td>{{ fmt(l.diameter_mm, 1) }}</td><td>{{ fmt(l.area_mm2, 1) }}</td><td>{{ fmt(l.volume_mm3, 0) }}</td>
<td>{{ l.severity }}</td><td class="verdict">{{ l.verdict or '' }}</td>
<td><button class="lv" data-verdict="confirm">confirm</button><button class="lv" data-verdict="reject">reject</button></td></tr>
{% else %}<tr><td colspan="8">no lesions</td></tr>{% endfor %}</table>
<h3>Missed findings</h3><ul id="missed-list"></ul>
<h3>Scan verdict</h3>
<form method="post" action="{{ url_for('review_scan', scan_id=scan.id) }}" id="scan-review">
<input type="hidden" name="csrf_token" value="{{ csrf_token() }}"><input type="hidden" name="reviewer" value="{{ reviewer }}">
<textarea name="note" rows="2" cols="36" placeholder="note" maxlength="2000"></textarea><br>
<button name="verdict" value="confirm" id="verdict-confirm">Confirm abnormal</button>
<button name="verdict" value="reject" id="verdict-reject">Reject findings</button>
<button name="verdict" value="normal" id="verdict-normal">Normal</button></form>
<ul id="reviews">{% for r in reviews %}<li><span class="badge v-{{ r.verdict }}">{{ r.verdict }}</span> {{ r.reviewer }}
{{ r.created_at }} {{ r.note }}</li>{% endfor %}</ul>
</div></div>
<script type="application/json" id="scan-data">{{ data|tojson }}</script>
{% endif %}{% endblock %}
{% block scripts %}{% if scan.status == 'done' %}<script src="{{ url_for('script', name='viewer.js') }}"></script>
{% elif scan.status != 'error' %}<script src="{{ url_for('script', name='progress.js') }}"></script>{% endif %}
{% endblock %}"""

ERROR = """{% extends "base.html" %}{% block title %}{{ code }} · aeanomaly review{% endblock %}
{% block main %}<h2>{{ title }}</h2><p class="err" id="error-message">{{ message }}</p>
<p><a href="{{ url_for('worklist') }}">Back to the worklist</a></p>{% endblock %}"""

REPORT = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{{ scan.name }} report</title>
<style>body{font-family:sans-serif;margin:20px} td,th{padding:3px 8px;border-bottom:1px solid #ccc;text-align:left}
img{max-width:420px;margin:4px}</style></head><body>
<h1>aeanomaly report: {{ scan.name }}</h1>
<p>Bundle {{ bundle_name }} ({{ scan.bundle_version }}), scored {{ scan.scored_at }}.</p>
<p>Scan score {{ fmt(scan.scan_score) }}, threshold {{ fmt(scan.threshold) }}, p-value {{ fmt(scan.p_value) }},
label <b>{{ scan.label }}</b>. {{ scan.note }}</p>
<p>sha256 {{ scan.sha256 }}</p>
<h2>Lesions</h2><table><tr><th>#</th><th>slices</th><th>centre (z, y, x)</th><th>Ø mm</th><th>area mm²</th>
<th>volume mm³</th><th>severity</th><th>p-value</th><th>verdict</th></tr>
{% for l in lesions %}<tr><td>{{ l.lesion_id }}</td><td>{{ l.slice_start }}–{{ l.slice_end }}</td>
<td>{{ fmt(l.z, 1) }}, {{ fmt(l.y, 1) }}, {{ fmt(l.x, 1) }}</td><td>{{ fmt(l.diameter_mm, 1) }}</td>
<td>{{ fmt(l.area_mm2, 1) }}</td><td>{{ fmt(l.volume_mm3, 0) }}</td><td>{{ l.severity }}</td><td>{{ fmt(l.p_value) }}</td>
<td>{{ l.verdict or '' }}{% if l.reviewer %} ({{ l.reviewer }}){% endif %}</td></tr>
{% else %}<tr><td colspan="9">none</td></tr>{% endfor %}</table>
<h2>Reviews</h2><ul>{% for r in reviews %}<li>{{ r.verdict }} by {{ r.reviewer }} at {{ r.created_at }} {{ r.note }}</li>
{% else %}<li>none</li>{% endfor %}</ul>
<h2>Missed findings</h2><ul>{% for m in missed %}<li>slice {{ m.slice }} (y {{ fmt(m.y, 0) }}, x {{ fmt(m.x, 0) }})
by {{ m.reviewer }}: {{ m.note }}</li>{% else %}<li>none</li>{% endfor %}</ul>
<h2>Slices</h2>{% for z, img in images %}<figure style="display:inline-block"><img src="data:image/png;base64,{{ img }}"
alt="slice {{ z }}"><figcaption>slice {{ z }}</figcaption></figure>{% endfor %}
</body></html>"""

PROGRESS_JS = r"""(function(){
const box=document.getElementById('progress-box'); if(!box) return;
async function poll(){
  try{
    const r=await fetch(box.dataset.statusUrl,{headers:{'Accept':'application/json'}});
    const j=await r.json();
    const bar=document.getElementById('progress'); if(bar) bar.value=j.progress;
    const st=document.getElementById('stage'); if(st) st.textContent=j.stage;
    if(j.status==='done'||j.status==='error'){ location.reload(); return; }
  }catch(e){}
  setTimeout(poll,500);
}
poll();
})();"""

WORKLIST_JS = r"""(function(){ setTimeout(function(){ location.reload(); }, 2000); })();"""

VIEWER_JS = r"""(function(){
const D=JSON.parse(document.getElementById('scan-data').textContent);
const csrf=document.querySelector('meta[name=csrf-token]').content;
const $=id=>document.getElementById(id);
const ct=$('ct'), heat=$('heat'), cont=$('contour'), slider=$('slice'), stack=$('stack');
let z=+slider.value, marking=false, pending=null;
function url(layer){ let u=D.slice_url.replace('999999', z)+'?layer='+layer;
  if(layer==='ct') u+='&window='+encodeURIComponent($('window').value); return u; }
function preload(){ for(const d of [1,-1,2,-2]){ const k=z+d; if(k<0||k>=D.n) continue;
  for(const layer of ['ct','heat']){ const i=new Image();
    i.src=D.slice_url.replace('999999',k)+'?layer='+layer+(layer==='ct'?'&window='+encodeURIComponent($('window').value):''); } } }
function drawPoints(){ const box=$('points'); box.innerHTML='';
  for(const m of D.missed){ if(m.slice!==z) continue; const d=document.createElement('div'); d.className='pt';
    d.style.left=(100*(m.x+0.5)/D.nx)+'%'; d.style.top=(100*(m.y+0.5)/D.ny)+'%'; d.title=m.note; box.appendChild(d); }
  if(pending&&pending.slice===z){ const d=document.createElement('div'); d.className='pt'; d.style.borderColor='#ff0';
    d.style.left=(100*(pending.x+0.5)/D.nx)+'%'; d.style.top=(100*(pending.y+0.5)/D.ny)+'%'; box.appendChild(d); } }
function show(k){ z=Math.max(0,Math.min(D.n-1,k)); slider.value=z; ct.src=url('ct'); heat.src=url('heat');
  cont.src=url('contour'); $('slice-no').textContent=z; const s=D.slice_scores[z];
  $('slice-score').textContent=(s===null?'–':s.toPrecision(4)); stack.dataset.slice=z; drawPoints(); preload();
  for(const tr of document.querySelectorAll('#lesions tr[data-lesion]'))
    tr.classList.toggle('here', +tr.dataset.z0<=z && z<=+tr.dataset.z1); }
function listMissed(){ const ul=$('missed-list'); ul.innerHTML='';
  for(const m of D.missed){ const li=document.createElement('li'); li.dataset.id=m.id;
    li.textContent='slice '+m.slice+' (y '+Math.round(m.y)+', x '+Math.round(m.x)+') '+m.reviewer+': '+m.note+' ';
    const go=document.createElement('a'); go.href='#'; go.textContent='show'; go.onclick=e=>{e.preventDefault(); show(m.slice);};
    const del=document.createElement('button'); del.textContent='remove'; del.onclick=()=>removeMissed(m.id);
    li.appendChild(go); li.appendChild(document.createTextNode(' ')); li.appendChild(del); ul.appendChild(li); } }
async function post(u, body){ const r=await fetch(u,{method:'POST',headers:{'Content-Type':'application/json',
  'X-CSRF-Token':csrf,'Accept':'application/json'},body:JSON.stringify(Object.assign({reviewer:$('reviewer').value},body))});
  const j=await r.json().catch(()=>({error:'server error '+r.status})); if(!r.ok) throw new Error(j.error||r.status); return j; }
function say(t, bad){ const m=$('message'); m.textContent=t; m.className=bad?'err':''; }
async function removeMissed(id){ try{ await post(D.missed_url+'/'+id+'/delete',{});
  D.missed=D.missed.filter(m=>m.id!==id); listMissed(); drawPoints(); say('point removed'); }catch(e){ say(e.message,true); } }
slider.addEventListener('input',()=>show(+slider.value));
$('window').addEventListener('change',()=>show(z));
$('opacity').addEventListener('input',e=>{ heat.style.opacity=e.target.value; });
$('show-contours').addEventListener('change',e=>{ cont.style.display=e.target.checked?'':'none'; });
heat.style.opacity=$('opacity').value;
let lesionIdx=-1;
document.addEventListener('keydown',e=>{ if(e.target.tagName==='INPUT'&&e.target.type!=='range'||e.target.tagName==='TEXTAREA') return;
  if(e.key==='ArrowUp'||e.key==='k'||e.key==='PageUp'){ show(z+1); e.preventDefault(); }
  else if(e.key==='ArrowDown'||e.key==='j'||e.key==='PageDown'){ show(z-1); e.preventDefault(); }
  else if(e.key==='Home'){ show(0); } else if(e.key==='End'){ show(D.n-1); }
  else if(e.key==='n'&&D.lesions.length){ lesionIdx=(lesionIdx+1)%D.lesions.length; show(Math.round(D.lesions[lesionIdx].z)); } });
for(const a of document.querySelectorAll('#lesions a.jump')) a.addEventListener('click',e=>{ e.preventDefault();
  show(+a.closest('tr').dataset.z); });
for(const b of document.querySelectorAll('#lesions button.lv')) b.addEventListener('click',async()=>{
  const tr=b.closest('tr'); try{ const j=await post(D.lesion_url.replace('999999',tr.dataset.lesion),{verdict:b.dataset.verdict});
    tr.querySelector('.verdict').textContent=j.verdict; say('lesion '+tr.dataset.lesion+': '+j.verdict); }catch(e){ say(e.message,true); } });
$('mark-missed').addEventListener('click',()=>{ marking=!marking; $('mark-missed').classList.toggle('active',marking);
  say(marking?'click on the slice where the tool missed a finding':''); });
stack.addEventListener('click',e=>{ if(!marking) return; const r=ct.getBoundingClientRect();
  const x=(e.clientX-r.left)/r.width*D.nx-0.5, y=(e.clientY-r.top)/r.height*D.ny-0.5;
  pending={slice:z,x:Math.max(0,Math.min(D.nx-1,x)),y:Math.max(0,Math.min(D.ny-1,y))};
  $('mf-where').textContent=z+' (y '+Math.round(pending.y)+', x '+Math.round(pending.x)+')'; $('missed-form').hidden=false;
  drawPoints(); $('mf-note').focus(); });
$('mf-cancel').addEventListener('click',()=>{ pending=null; $('missed-form').hidden=true; drawPoints(); });
$('mf-save').addEventListener('click',async()=>{ if(!pending) return;
  try{ const j=await post(D.missed_url,Object.assign({note:$('mf-note').value},pending)); D.missed.push(j);
    pending=null; $('missed-form').hidden=true; $('mf-note').value=''; marking=false; $('mark-missed').classList.remove('active');
    listMissed(); drawPoints(); say('missed finding saved'); }catch(e){ say(e.message,true); } });
$('scan-review').addEventListener('submit',()=>{ $('scan-review').elements.reviewer.value=$('reviewer').value; });
listMissed(); show(z);
})();"""

SCRIPTS = {"viewer.js": VIEWER_JS, "progress.js": PROGRESS_JS, "worklist.js": WORKLIST_JS}
TEMPLATES = {"base.html": BASE, "worklist.html": WORKLIST, "viewer.html": VIEWER, "error.html": ERROR,
             "report.html": REPORT}
