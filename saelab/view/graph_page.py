"""The graph pages' HTML: the list of graphs (with the "compute a graph" form) and one graph's page, whose
script is graph_script.py. Vanilla JS + inline SVG, no external asset (the app runs offline). Every text from
a graph file or the server is set with `textContent` / DOM nodes, never innerHTML."""

from .app_page import PAGE_JS
from .graph_script import GRAPH_JS
from .render import CSS

_HEAD = '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>@TITLE@</title><style>' + CSS

GRAPH_CSS = """
body{max-width:none} .panel{border:1px solid #ddd;border-radius:6px;padding:.5em 1em;margin:.6em 0}
.layout{display:flex;gap:1em;align-items:flex-start} .layout>#graphbox{flex:1;overflow:auto;min-width:0}
.side{width:400px;flex:none}
#graph .link{fill:none;stroke-opacity:.55} #graph .link.hl{stroke-opacity:1}
#graph .node{stroke:#333;stroke-width:1;cursor:pointer} #graph .node.hover{stroke:#000;stroke-width:2.5}
#graph .node.pinned{stroke:#e0a000;stroke-width:3}
#graph .feature{fill:#d9ecff} #graph .error{fill:#ccc} #graph .embedding{fill:#ffe3b8} #graph .logit{fill:#c9f0c9}
#graph text{font-size:11px;font-family:ui-monospace,monospace}
#graph .rowlabel{fill:#888} .err{color:#b00} .ok{color:#070}
#pinned li,#supernodes li{margin:2px 0;font-size:.9em} #ivbefore td,#ivafter td{white-space:nowrap;padding:1px 4px} #ivfeatures .ingraph{background:#eef5ff} #examples .ex{font-size:.8em}
"""

GRAPH_HTML = (
    _HEAD.replace("@TITLE@", "saelab: attribution graph")
    + GRAPH_CSS
    + """</style></head><body>
<p><a href="/graphs">&larr; graphs</a> &middot; <a href="/">app</a></p>
<h1 id="title">graph</h1><p id="prompt" class="muted"></p><p id="loaderr" class="err"></p>
<p class="muted">Rows: layers (token embeddings at the bottom, output logits at the top); columns: token positions.
Links: width by |weight|, <span style="color:#2166ac">blue</span> positive, <span style="color:#b2182b">red</span>
negative. Hover a node for its explanation; click a feature to open its page; shift-click (or "pin") to pin it.</p>
<div class="layout"><div id="graphbox"><svg id="graph" xmlns="http://www.w3.org/2000/svg"></svg></div>
<div class="side">
<div class="panel" id="detail"><h2>Node</h2><p id="nodetitle" class="muted">hover a node</p>
<p id="clerp" class="expl"></p><p id="nodestats" class="muted"></p>
<p><button id="pinbtn" disabled>pin</button> <a id="featurelink" target="_blank"></a></p><div id="examples"></div></div>
<div class="panel"><h2>Subgraph</h2><ul id="pinned"></ul>
<p><input id="snname" size="16" placeholder="supernode name"> <button id="groupbtn">group checked</button></p>
<ul id="supernodes"></ul><p><button id="savebtn">Save</button> <span id="savestatus"></span></p></div>
<div class="panel"><h2>Intervene</h2><p class="muted">on the checked pinned features</p>
<p><select id="ivop"><option value="ablate">ablate</option><option value="scale">scale by</option>
<option value="clamp">clamp to</option></select> <input id="ivvalue" size="6" value="0">
<button id="ivbtn">Run</button> <span id="iverr" class="err"></span></p>
<div class="layout"><table id="ivbefore"></table><table id="ivafter"></table></div><table id="ivfeatures"></table></div>
</div></div>
<script>"""
    + GRAPH_JS
    + """</script></body></html>"""
)

GRAPHS_HTML = (
    _HEAD.replace("@TITLE@", "saelab: attribution graphs")
    + GRAPH_CSS
    + """</style></head><body>
<p><a href="/">&larr; app</a></p><h1>Attribution graphs</h1>
<table id="graphs"><thead><tr><th>graph</th><th>prompt</th><th>nodes</th><th>links</th><th>pinned</th></tr></thead>
<tbody></tbody></table><p id="listerr" class="err"></p>
<div class="panel"><h2>Compute a graph</h2><p id="needrepl" class="muted"></p>
<p>Prompt <input id="cprompt" size="60" value="The capital of France is"> name <input id="cslug" size="16"
 placeholder="(from the prompt)"> <button id="computebtn">Compute</button> <button id="cancelbtn" disabled>Cancel</button></p>
<p><span id="computestatus" class="muted"></span> <span id="computeerr" class="err"></span> <a id="computed"></a></p></div>
<script>
"""
    + PAGE_JS
    + """async function list() {
  const body = $('graphs').tBodies[0]; body.replaceChildren();
  try {
    const r = await api('/api/graphs');
    $('needrepl').textContent = r.can_run ? '' : 'needs `saelab serve --replacement REPLACEMENT_DIR`';
    for (const g of r.graphs) {
      const tr = el('tr'); const a = el('a', g.slug, 'graphlink'); a.href = '/graph/' + encodeURIComponent(g.slug);
      tr.appendChild(el('td')).appendChild(g.error ? el('span', g.slug) : a);
      if (g.error) { tr.appendChild(el('td', g.error, 'err')).colSpan = 4; }
      else for (const v of [g.prompt, g.n_nodes, g.n_links, g.n_pinned]) tr.appendChild(el('td', String(v)));
      body.appendChild(tr);
    }
  } catch (e) { $('listerr').textContent = e.message; }
}
let job = null;
async function compute() {
  $('computeerr').textContent = ''; $('computed').textContent = ''; $('computebtn').disabled = true;
  try {
    const req = {prompt: $('cprompt').value}; if ($('cslug').value) req.slug = $('cslug').value;
    job = (await api('/api/graphs/compute', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(req)})).job;
    $('cancelbtn').disabled = false;
    while (true) {
      const j = await api('/api/jobs/' + job);
      $('computestatus').textContent = j.status + (j.status === 'running' && j.message ? ': ' + j.message : '');
      if (j.status === 'done') { $('computed').textContent = 'open ' + j.result.slug; $('computed').href = j.result.url; list(); break; }
      if (j.status === 'error') throw new Error(j.error);
      if (j.status === 'cancelled') break;
      await new Promise(r => setTimeout(r, 300));
    }
  } catch (e) { $('computeerr').textContent = e.message; $('computestatus').textContent = 'error'; }
  job = null; $('cancelbtn').disabled = true; $('computebtn').disabled = false;
}
$('computebtn').addEventListener('click', compute);
$('cancelbtn').addEventListener('click', () => job && api('/api/jobs/' + job + '/cancel', {method: 'POST'}).catch(() => {}));
list();
</script></body></html>"""
)
