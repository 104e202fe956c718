"""The web app's one page: search, "which features fire on this text", steering playground.

All data from the server is put into the page with `textContent` / DOM nodes, never innerHTML,
so tokens, model text and explanations cannot become markup.
"""

from ..features.steering import DEFAULT_STRENGTH, SWEEP
from .render import CSS, TOKEN_JS
from .steer_panel import PROGRESS_CSS, STEER_JS

# what every page's script starts with: $ (by id), el (an element with text), api (fetch JSON, throw its detail)
PAGE_JS = """const $ = id => document.getElementById(id);
function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; }
async function api(url, opts) {
  const r = await fetch(url, opts);
  const body = await r.json().catch(() => ({detail: r.statusText}));
  if (!r.ok) throw new Error(typeof body.detail === 'string' ? body.detail : JSON.stringify(body.detail));
  return body;
}
"""

APP_HTML = (
    (
        """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>saelab</title>
<style>"""
        + CSS
        + PROGRESS_CSS
        + """
.panel{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:1em 0}
.fire{display:inline-block;margin:2px;padding:2px 3px;border-radius:3px;cursor:default}
.outputs{display:flex;gap:1em} .outputs>div{flex:1;min-width:0} .outputs pre{white-space:pre-wrap;background:#f6f6f6;padding:.5em;min-height:3em}
.prompt{color:#777} .nl{color:#aaa}
.err{color:#b00}
</style></head><body>
<h1>saelab</h1>
<p>SAE: <select id="sae"></select> <span id="saeinfo" class="muted"></span></p>

<div class="panel"><h2>Search features</h2>
<input id="q" size="40" placeholder="explanation words, a token, or a feature id (26, #26)">
<select id="by"><option value="text">by explanation</option><option value="token">by token</option></select>
<button id="searchbtn">Search</button> <span id="searcherr" class="err"></span>
<p class="muted">An empty search lists every feature, best interpretation score first, then by density.</p>
<table id="results"><tbody></tbody></table>
<p><button id="searchprev" disabled>&larr; previous</button> <span id="searchcount" class="muted"></span>
<button id="searchnext" disabled>next &rarr;</button></p></div>

<div class="panel"><h2>Which features fire on this text</h2>
<textarea id="firetext" rows="3">The cat sat on the mat.</textarea><br>
<button id="firebtn">Analyse</button> <span id="fireerr" class="err"></span>
<div id="firetokens"></div><div id="firedetail" class="muted"></div></div>

<div class="panel"><h2>Steering playground</h2>
<p>Prompt <input id="prompt" size="60" value="My favourite thing is"></p>
<p>Feature <input id="latent" size="6" value="0"> <select id="op"><option value="clamp">clamp to</option><option value="add">add</option></select>
<input id="value" size="6" value="@DEFAULT@"> <label><input type="checkbox" id="relative" checked> &times; max activation</label>
<label title="one steered text per multiple of the value, same seed"><input type="checkbox" id="sweep" checked> sweep @SWEEP_TEXT@</label>
tokens <input id="ntok" size="4" value="30"> temperature <input id="temp" size="4" value="0"> seed <input id="seed" size="4" value="0">
<button id="steerbtn">Generate</button> <button id="cancelbtn" disabled>Cancel</button></p>
<p><span id="progress" class="progress"><span id="progressbar"></span></span> <span id="steerstatus" class="muted"></span> <span id="steererr" class="err"></span></p>
<div id="steerwarn"></div><div class="outputs" id="outputs"></div></div>

<script>
"""
        + PAGE_JS
        + TOKEN_JS
        + STEER_JS
        + """const sae = () => $('sae').value;
const featureUrl = i => '/sae/' + encodeURIComponent(sae()) + '/feature/' + i;

async function loadSaes() {
  const saes = await api('/api/saes');
  for (const s of saes) { const o = el('option', s.name); o.value = s.name; $('sae').appendChild(o); }
  const show = () => { const s = saes.find(x => x.name === sae()); $('saeinfo').textContent = s ? `${s.d_sae} features at ${s.hookpoint}, ${s.n_explained} explained` : ''; };
  $('sae').addEventListener('change', show); show();
}

const PAGE = 50;
let searchAt = 0;
async function search(offset = 0) {  // one page of results; previous / next move through the rest
  $('searcherr').textContent = ''; $('searchcount').textContent = '';
  const body = $('results').tBodies[0]; body.replaceChildren();
  $('searchprev').disabled = $('searchnext').disabled = true;
  try {
    const r = await api(`/api/search?sae=${encodeURIComponent(sae())}&by=${$('by').value}&q=${encodeURIComponent($('q').value)}&offset=${offset}&limit=${PAGE}`);
    searchAt = r.offset;
    if (!r.results.length) body.appendChild(el('tr')).appendChild(el('td', 'no matches', 'muted'));
    for (const f of r.results) {
      const tr = el('tr'); const a = el('a', 'feature ' + f.id); a.href = featureUrl(f.id); a.className = 'result';
      tr.appendChild(el('td')).appendChild(a);
      tr.appendChild(el('td', f.explanation || ''));
      const td = el('td'); for (const t of f.top_tokens) td.appendChild(el('span', tokLabel(t), 'pill')); tr.appendChild(td);
      tr.appendChild(el('td', (f.score != null ? `score ${f.score.toFixed(3)}, ` : '') + 'density ' + f.density.toPrecision(3), 'muted'));
      body.appendChild(tr);
    }
    if (r.results.length) $('searchcount').textContent = `${r.offset + 1}-${r.offset + r.results.length} of ${r.total}`;
    $('searchprev').disabled = r.offset === 0;
    $('searchnext').disabled = r.offset + r.results.length >= r.total;
  } catch (e) { $('searcherr').textContent = e.message; }
}

async function fire() {
  $('fireerr').textContent = ''; $('firetokens').replaceChildren(); $('firedetail').textContent = '';
  try {
    const r = await api('/api/fire', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify({sae: sae(), text: $('firetext').value})});
    const mx = Math.max(1e-9, ...r.tokens.map(t => t.features.length ? t.features[0].act : 0));
    for (const t of r.tokens) {
      const s = el('span', tokLabel(t.token), 'fire tok');
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

const SWEEP = [@SWEEP@];
function showText(pre, prompt, text) {  // the prompt echoed (muted), newlines visible as a symbol
  pre.replaceChildren(el('span', prompt, 'prompt'));
  const cont = el('span', undefined, 'cont');
  text.split('\\n').forEach((part, k) => { if (k) { cont.appendChild(el('span', '\\u21b5', 'nl')); cont.appendChild(document.createTextNode('\\n')); } cont.appendChild(document.createTextNode(part)); });
  pre.appendChild(cont);
}
function output(title, id) {
  const d = el('div'); d.appendChild(el('h3', title)); const pre = el('pre'); if (id) pre.id = id; d.appendChild(pre);
  $('outputs').appendChild(d); return [d, pre];
}
function wholeNumber(id, what) {  // a number field read as the server would, refused in words before any request
  const text = $(id).value.trim();
  if (!/^\\d+$/.test(text)) throw new Error(`${what} must be a whole number, 0 or more; got ${JSON.stringify(text)}`);
  return parseInt(text);
}
function finiteNumber(id, what) {
  const text = $(id).value.trim(), x = Number(text);
  if (!text || !Number.isFinite(x)) throw new Error(`${what} must be a number; got ${JSON.stringify(text)}`);
  return x;
}
async function steer() {
  $('steererr').textContent = ''; $('outputs').replaceChildren(); $('steerwarn').replaceChildren();
  try {
    const req = {sae: sae(), prompt: $('prompt').value, max_new_tokens: wholeNumber('ntok', 'the number of tokens'), seed: wholeNumber('seed', 'the seed'),
                 temperature: finiteNumber('temp', 'the temperature'), strengths: $('sweep').checked ? SWEEP : [1],
                 edits: [{latent: wholeNumber('latent', 'the feature id'), op: $('op').value, value: finiteNumber('value', 'the value'), relative: $('relative').checked}]};
    const j = await steerJob(req, {bar: $('progressbar'), status: $('steerstatus'), cancel: $('cancelbtn'), button: $('steerbtn')});
    if (!j) return;
    for (const w of j.result.warnings || []) $('steerwarn').appendChild(el('p', w, 'warn'));
    showText(output('unsteered', 'unsteered')[1], j.result.prompt, j.result.unsteered);
    j.result.sweep.forEach((v, k) => {
      const used = v.edits.map(e => `${e.op} ${e.latent} ${e.op === 'add' ? '+' : '\\u2192'} ${e.value.toPrecision(3)}`).join(', ');
      const [d, pre] = output(`\\u00d7${v.strength}: ${used}`, k === 0 ? 'steered' : undefined);
      d.className = 'variant'; showText(pre, j.result.prompt, v.text);
      if (v.degenerate) d.appendChild(el('p', 'degenerate: ' + v.degenerate, 'warn'));
    });
  } catch (e) { $('steererr').textContent = e.message; $('steerstatus').textContent = 'error'; }
}
$('searchbtn').addEventListener('click', () => search(0));
$('q').addEventListener('keydown', e => { if (e.key === 'Enter') search(0); });
$('searchprev').addEventListener('click', () => search(Math.max(0, searchAt - PAGE)));
$('searchnext').addEventListener('click', () => search(searchAt + PAGE));
$('firebtn').addEventListener('click', fire);
$('steerbtn').addEventListener('click', steer);
enterStarts($('steerbtn'), ...['prompt', 'latent', 'value', 'ntok', 'temp', 'seed'].map($));
loadSaes();
</script></body></html>"""
    )  # the whole page: the placeholders are in its HTML and its script
    .replace("@DEFAULT@", f"{DEFAULT_STRENGTH:g}")
    .replace("@SWEEP_TEXT@", " ".join(f"{x:g}&times;" for x in SWEEP))
    .replace("@SWEEP@", ", ".join(f"{x:g}" for x in SWEEP))
)
