"""The web app's one page: search, "which features fire on this text", steering playground.

All data from the server is put into the page with `textContent` / DOM nodes, never innerHTML,
so tokens, model text and explanations cannot become markup.
"""

from .render import CSS

APP_HTML = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>saelab</title>
<style>""" + CSS + """
.panel{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:1em 0}
#progress{width:300px;height:10px;background:#eee;display:inline-block;vertical-align:middle}
#progressbar{height:10px;width:0;background:#3b8ee8}
.fire{display:inline-block;margin:2px;padding:2px 3px;border-radius:3px;cursor:default}
.outputs{display:flex;gap:1em} .outputs>div{flex:1} .outputs pre{white-space:pre-wrap;background:#f6f6f6;padding:.5em;min-height:3em}
.err{color:#b00}
</style></head><body>
<h1>saelab</h1>
<p>SAE: <select id="sae"></select> <span id="saeinfo" class="muted"></span></p>

<div class="panel"><h2>Search features</h2>
<input id="q" size="40" placeholder="explanation words or a token">
<select id="by"><option value="text">by explanation</option><option value="token">by token</option></select>
<button id="searchbtn">Search</button> <span id="searcherr" class="err"></span>
<table id="results"><tbody></tbody></table></div>

<div class="panel"><h2>Which features fire on this text</h2>
<textarea id="firetext" rows="3">The cat sat on the mat.</textarea><br>
<button id="firebtn">Analyse</button> <span id="fireerr" class="err"></span>
<div id="firetokens"></div><div id="firedetail" class="muted"></div></div>

<div class="panel"><h2>Steering playground</h2>
<p>Prompt <input id="prompt" size="60" value="My favourite thing is"></p>
<p>Feature <input id="latent" size="6" value="0"> <select id="op"><option value="clamp">clamp to</option><option value="add">add</option></select>
<input id="value" size="6" value="4"> <label><input type="checkbox" id="relative" checked> &times; max activation</label>
tokens <input id="ntok" size="4" value="30"> temperature <input id="temp" size="4" value="0"> seed <input id="seed" size="4" value="0">
<button id="steerbtn">Generate</button></p>
<p><span id="progress"><span id="progressbar" style="display:block"></span></span> <span id="steerstatus" class="muted"></span> <span id="steererr" class="err"></span></p>
<div class="outputs"><div><h3>unsteered</h3><pre id="unsteered"></pre></div><div><h3>steered</h3><pre id="steered"></pre></div></div></div>

<script>
const $ = id => document.getElementById(id);
function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; }
async function api(url, opts) {
  const r = await fetch(url, opts);
  const body = await r.json().catch(() => ({detail: r.statusText}));
  if (!r.ok) throw new Error(typeof body.detail === 'string' ? body.detail : JSON.stringify(body.detail));
  return body;
}
const sae = () => $('sae').value;
const featureUrl = i => '/sae/' + encodeURIComponent(sae()) + '/feature/' + i;

async function loadSaes() {
  const saes = await api('/api/saes');
  for (const s of saes) { const o = el('option', s.name); o.value = s.name; $('sae').appendChild(o); }
  const show = () => { const s = saes.find(x => x.name === sae()); $('saeinfo').textContent = s ? `${s.d_sae} features at ${s.hookpoint}, ${s.n_explained} explained` : ''; };
  $('sae').addEventListener('change', show); show();
}

async function search() {
  $('searcherr').textContent = '';
  const body = $('results').tBodies[0]; body.replaceChildren();
  try {
    const r = await api(`/api/search?sae=${encodeURIComponent(sae())}&by=${$('by').value}&q=${encodeURIComponent($('q').value)}`);
    if (!r.results.length) body.appendChild(el('tr')).appendChild(el('td', 'no matches', 'muted'));
    for (const f of r.results) {
      const tr = el('tr'); const a = el('a', 'feature ' + f.id); a.href = featureUrl(f.id); a.className = 'result';
      tr.appendChild(el('td')).appendChild(a);
      tr.appendChild(el('td', f.explanation || ''));
      const td = el('td'); for (const t of f.top_tokens) td.appendChild(el('span', t, 'pill')); tr.appendChild(td);
      tr.appendChild(el('td', 'density ' + f.density.toPrecision(3), 'muted'));
      body.appendChild(tr);
    }
  } catch (e) { $('searcherr').textContent = e.message; }
}

async function fire() {
  $('fireerr').textContent = ''; $('firetokens').replaceChildren(); $('firedetail').textContent = '';
  try {
    const r = await api('/api/fire', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify({sae: sae(), text: $('firetext').value})});
    const mx = Math.max(1e-9, ...r.tokens.map(t => t.features.length ? t.features[0].act : 0));
    for (const t of r.tokens) {
      const s = el('span', t.token.replace(/\\n/g, '\\u21b5'), 'fire tok');
      const top = t.features[0];
      s.style.background = top ? `rgba(255,120,0,${(0.1 + 0.9 * top.act / mx).toFixed(2)})` : '';
      s.title = t.features.map(f => `#${f.id} ${f.act.toFixed(2)}`).join('\\n');
      s.addEventListener('mouseenter', () => {
        const d = $('firedetail'); d.replaceChildren(el('span', 'token ' + JSON.stringify(t.token) + ': '));
        for (const f of t.features) { const a = el('a', `#${f.id} (${f.act.toFixed(2)}${f.explanation ? ', ' + f.explanation : ''}) `); a.href = featureUrl(f.id); d.appendChild(a); }
      });
      $('firetokens').appendChild(s);
    }
  } catch (e) { $('fireerr').textContent = e.message; }
}

async function steer() {
  $('steererr').textContent = ''; $('unsteered').textContent = ''; $('steered').textContent = '';
  $('progressbar').style.width = '0'; $('steerbtn').disabled = true;
  try {
    const req = {sae: sae(), prompt: $('prompt').value, max_new_tokens: parseInt($('ntok').value), seed: parseInt($('seed').value),
                 temperature: parseFloat($('temp').value),
                 edits: [{latent: parseInt($('latent').value), op: $('op').value, value: parseFloat($('value').value), relative: $('relative').checked}]};
    const {job} = await api('/api/steer', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(req)});
    while (true) {
      const j = await api('/api/jobs/' + job);
      $('progressbar').style.width = (300 * j.done / Math.max(1, j.total)) + 'px';
      $('steerstatus').textContent = `${j.status}: ${j.done}/${j.total} tokens`;
      if (j.status === 'done') { $('unsteered').textContent = j.result.unsteered; $('steered').textContent = j.result.steered; break; }
      if (j.status === 'error') throw new Error(j.error);
      await new Promise(r => setTimeout(r, 250));
    }
  } catch (e) { $('steererr').textContent = e.message; }
  $('steerbtn').disabled = false;
}
$('searchbtn').addEventListener('click', search);
$('q').addEventListener('keydown', e => { if (e.key === 'Enter') search(); });
$('firebtn').addEventListener('click', fire);
$('steerbtn').addEventListener('click', steer);
loadSaes();
</script></body></html>"""
