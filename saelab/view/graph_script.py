"""The graph page's script (graph_page.py embeds it): draws every node of the graph file and its links (the
file is already pruned; beyond 5,000 links only the strongest, unless ?links=all), shows a hovered node's explanation / clerp and top
examples, pins nodes, groups them into supernodes, saves both into the file's qParams, and runs interventions.

Layout: one row per layer present (token embeddings at the bottom, logits at the top), one column per token
position (its token string under it), a column as wide as its fullest cell. SVG elements carry `data-id`
(nodes) and `data-source` / `data-target` (links) so a test can compare the drawing with the file.
"""

from .app_page import PAGE_JS

GRAPH_JS = (
    PAGE_JS
    + r"""
const SVG = 'http://www.w3.org/2000/svg';
function sv(tag, attrs, text) { const e = document.createElementNS(SVG, tag); for (const k in attrs) e.setAttribute(k, attrs[k]); if (text !== undefined) e.textContent = text; return e; }
const post = (url, obj) => api(url, {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(obj)});
const slug = decodeURIComponent(location.pathname.split('/').pop());
let G = null, byId = {}, pinned = [], supernodes = [], shown = null;
const examples = {};

function kind(n) {
  const t = n.feature_type;
  return t === 'embedding' ? 'embedding' : t === 'logit' ? 'logit' : t.includes('error') ? 'error' : 'feature';
}
function rowKey(n) { const k = kind(n); return k === 'embedding' ? -1 : k === 'logit' ? 1e9 : +n.layer; }
const ws = s => String(s).replace(/\n/g, '\u23ce').replace(/\t/g, '\u2192').replace(/\r/g, '\u21b5');
function tokenAt(p) { return ws(G.metadata.prompt_tokens[p] ?? ''); }
function describe(n) {
  const k = kind(n);
  if (n.explanation) return n.explanation;
  if (n.clerp) return n.clerp;
  if (k === 'embedding') return `Emb: "${tokenAt(n.ctx_idx)}"`;
  if (k === 'error') return `Err: mlp "${tokenAt(n.ctx_idx)}"`;
  return '(no explanation)';
}

const MAX_LINKS = 5000;  // SVG stays responsive; ?links=all (or ?links=N) draws more

function linkLimit() {
  const v = new URLSearchParams(location.search).get('links');
  return v === 'all' ? Infinity : (parseInt(v, 10) > 0 ? parseInt(v, 10) : MAX_LINKS);
}

function draw() {
  const svg = $('graph'); svg.replaceChildren();
  // reduce, not Math.max(...list): a graph pruned at circuit-tracer's defaults can hold 100k+ links, more
  // arguments than a call may take
  const nPos = Math.max(G.metadata.prompt_tokens.length, 1 + G.nodes.reduce((m, n) => Math.max(m, n.ctx_idx), 0));
  const rows = [...new Set(G.nodes.map(rowKey))].sort((a, b) => a - b);
  const cells = {};
  for (const n of G.nodes) (cells[rowKey(n) + '|' + n.ctx_idx] ||= []).push(n);
  const WRAP = 16;  // nodes side by side in a cell; more wrap onto extra lines inside the row
  const per = Array(nPos).fill(1), lines = {};
  for (const k in cells) {
    const [r, p] = k.split('|').map(Number);
    per[p] = Math.max(per[p], Math.min(WRAP, cells[k].length));
    lines[r] = Math.max(lines[r] || 1, Math.ceil(cells[k].length / WRAP));
  }
  const SP = 16, LH = 14, PAD = 8, RH = 46, LEFT = 60, TOP = 20;
  const colW = per.map(c => Math.max(56, c * SP + 2 * PAD)), colX = [];
  colW.reduce((x, w, i) => (colX[i] = x, x + w), LEFT);
  const rowTop = {};  // rows drawn top-down: logits first, embeddings last
  rows.slice().reverse().reduce((y, r) => (rowTop[r] = y, y + RH + LH * (lines[r] - 1)), TOP);
  const width = colX[nPos - 1] + colW[nPos - 1] + 10;
  const height = rowTop[rows[0]] + RH + LH * (lines[rows[0]] - 1) + 40;
  svg.setAttribute('width', width); svg.setAttribute('height', height);
  const rowY = r => rowTop[r] + RH / 2;
  const pos = {};
  for (const k in cells) {
    const [r, p] = k.split('|').map(Number);
    const list = cells[k].slice().sort((a, b) => (+a.feature || 0) - (+b.feature || 0));
    list.forEach((n, i) => {
      const line = Math.floor(i / WRAP), inLine = Math.min(WRAP, list.length - line * WRAP);
      const x0 = colX[p] + (colW[p] - inLine * SP) / 2 + SP / 2;
      pos[n.node_id] = [x0 + (i % WRAP) * SP, rowY(r) + line * LH];
    });
  }
  for (const r of rows) {
    const label = r === -1 ? 'emb' : r === 1e9 ? 'logits' : 'L' + r;
    svg.appendChild(sv('text', {x: 4, y: rowY(r) + 4, class: 'rowlabel'}, label));
  }
  for (let p = 0; p < nPos; p++) {
    const t = sv('text', {x: colX[p] + colW[p] / 2, y: height - 16, 'text-anchor': 'middle', class: 'col', 'data-pos': p}, tokenAt(p));
    svg.appendChild(t);
  }
  const maxW = G.links.reduce((m, e) => Math.max(m, Math.abs(e.weight)), 1e-12);
  const gl = sv('g', {id: 'links'}), gn = sv('g', {id: 'nodes'});
  svg.appendChild(gl); svg.appendChild(gn);
  const order = G.links.map((e, i) => i).sort((a, b) => Math.abs(G.links[a].weight) - Math.abs(G.links[b].weight));
  for (const i of order.slice(-linkLimit())) {  // the strongest, drawn last (on top)
    const e = G.links[i], [x1, y1] = pos[e.source], [x2, y2] = pos[e.target];
    const line = sv('line', {x1, y1, x2, y2, class: 'link', 'data-source': e.source, 'data-target': e.target,
      stroke: e.weight >= 0 ? '#2166ac' : '#b2182b', 'stroke-width': (0.3 + 3.7 * Math.abs(e.weight) / maxW).toFixed(2)});
    line.appendChild(sv('title', {}, `${e.source} \u2192 ${e.target}: ${e.weight.toPrecision(3)}`));
    gl.appendChild(line);
  }
  for (const n of G.nodes) {
    const [x, y] = pos[n.node_id], k = kind(n);
    const shape = k === 'feature' ? sv('circle', {cx: x, cy: y, r: 5.5})
      : k === 'logit' ? sv('polygon', {points: `${x},${y - 7} ${x + 7},${y} ${x},${y + 7} ${x - 7},${y}`})
      : sv('rect', {x: x - 5, y: y - 5, width: 10, height: 10});
    shape.setAttribute('class', 'node ' + k);
    shape.setAttribute('data-id', n.node_id);
    shape.addEventListener('mouseenter', () => hover(n));
    shape.addEventListener('click', ev => {
      if (!ev.shiftKey && n.feature_url) window.open(n.feature_url, '_blank');
      else togglePin(n.node_id);
    });
    gn.appendChild(shape);
  }
  markPinned();
}

async function hover(n) {
  shown = n;
  document.querySelectorAll('#graph .hover').forEach(e => e.classList.remove('hover'));
  document.querySelectorAll(`#graph [data-id="${CSS.escape(n.node_id)}"]`).forEach(e => e.classList.add('hover'));
  document.querySelectorAll('#graph .link').forEach(e => e.classList.toggle('hl',
    e.dataset.source === n.node_id || e.dataset.target === n.node_id));
  const k = kind(n);
  $('nodetitle').textContent = `${n.node_id}: ${k}` + (k === 'embedding' || k === 'logit' ? '' : ` at layer ${n.layer}`) + `, position ${n.ctx_idx} "${tokenAt(n.ctx_idx)}"`;
  $('clerp').textContent = describe(n);
  const stats = [];
  if (n.activation != null) stats.push('activation ' + (+n.activation).toPrecision(3));
  if (n.influence != null) stats.push('influence ' + (+n.influence).toPrecision(3));
  if (n.explanation && n.clerp) stats.push('clerp: ' + n.clerp);
  $('nodestats').textContent = stats.join(' \u00b7 ');
  $('pinbtn').disabled = false; $('pinbtn').textContent = pinned.includes(n.node_id) ? 'unpin' : 'pin';
  $('featurelink').textContent = n.feature_url ? 'open feature page' : '';
  if (n.feature_url) $('featurelink').href = n.feature_url; else $('featurelink').removeAttribute('href');
  $('examples').replaceChildren();
  if (!n.feature_api) return;
  try {
    examples[n.feature_api] ||= await api(n.feature_api);
    if (shown !== n) return;
    $('examples').appendChild(el('p', 'top examples', 'muted'));
    for (const ex of examples[n.feature_api].top.slice(0, 3)) {
      const d = el('div', undefined, 'ex');
      ex.tokens.forEach((t, i) => { const b = el(i === ex.peak ? 'b' : 'span', ws(t)); if (i === ex.peak) b.className = 'peak'; d.appendChild(b); });
      $('examples').appendChild(d);
    }
  } catch (e) { $('examples').appendChild(el('p', e.message, 'err')); }
}

function togglePin(id) {
  const i = pinned.indexOf(id);
  if (i >= 0) pinned.splice(i, 1); else pinned.push(id);
  markPinned();
  if (shown && shown.node_id === id) $('pinbtn').textContent = i >= 0 ? 'pin' : 'unpin';
}
function markPinned() {
  document.querySelectorAll('#graph .node').forEach(e => e.classList.toggle('pinned', pinned.includes(e.dataset.id)));
  const ul = $('pinned'), checked = new Set([...ul.querySelectorAll('input:checked')].map(c => c.value));
  ul.replaceChildren();
  for (const id of pinned) {
    const n = byId[id], li = el('li'); li.dataset.id = id;
    const c = el('input'); c.type = 'checkbox'; c.value = id; c.checked = checked.has(id);
    li.appendChild(c); li.appendChild(el('span', ' ' + id + ' ')); li.appendChild(el('span', n ? describe(n) : '', 'muted'));
    const x = el('button', '\u00d7'); x.title = 'unpin'; x.addEventListener('click', () => togglePin(id)); li.appendChild(x);
    ul.appendChild(li);
  }
  const us = $('supernodes'); us.replaceChildren();
  supernodes.forEach(([name, ...ids], k) => {
    const li = el('li'); li.appendChild(el('b', name)); li.appendChild(el('span', ': ' + ids.join(', '), 'muted'));
    const x = el('button', '\u00d7'); x.title = 'remove'; x.addEventListener('click', () => { supernodes.splice(k, 1); markPinned(); });
    li.appendChild(x); us.appendChild(li);
  });
}
const checkedIds = () => [...$('pinned').querySelectorAll('input:checked')].map(c => c.value);

function group() {
  const name = $('snname').value.trim(), ids = checkedIds();
  $('savestatus').textContent = '';
  if (!name || !ids.length) { $('savestatus').textContent = 'check pinned nodes and name the supernode'; return; }
  supernodes.push([name, ...ids]); $('snname').value = ''; markPinned();
}
async function save() {
  $('savestatus').textContent = 'saving'; $('savestatus').className = '';
  try {
    await post(`/api/graph/${encodeURIComponent(slug)}/state`, {pinnedIds: pinned, supernodes});
    $('savestatus').textContent = 'saved'; $('savestatus').className = 'ok';
  } catch (e) { $('savestatus').textContent = e.message; $('savestatus').className = 'err'; }
}

function logitTable(t, title, rows, key) {
  t.replaceChildren(); t.appendChild(el('caption', title));
  for (const r of rows) {
    const tr = el('tr'); tr.appendChild(el('td', ws(r.token), 'tok'));
    tr.appendChild(el('td', r.prob.toFixed(3))); tr.appendChild(el('td', key(r), 'muted')); t.appendChild(tr);
  }
}
async function intervene() {
  $('iverr').textContent = ''; for (const id of ['ivbefore', 'ivafter', 'ivfeatures']) $(id).replaceChildren();
  const ids = checkedIds().filter(id => byId[id] && kind(byId[id]) === 'feature');
  if (!ids.length) { $('iverr').textContent = 'check one or more pinned features'; return; }
  try {
    const edits = ids.map(node_id => ({node_id, op: $('ivop').value, value: parseFloat($('ivvalue').value) || 0}));
    const r = await post(`/api/graph/${encodeURIComponent(slug)}/intervene`, {edits});
    logitTable($('ivbefore'), 'before', r.before, x => 'after ' + x.prob_after.toFixed(3));
    logitTable($('ivafter'), 'after', r.after, x => 'before ' + x.prob_before.toFixed(3));
    const t = $('ivfeatures'); t.replaceChildren();
    if (r.features.length) t.appendChild(el('caption', 'features that moved most'));
    for (const f of r.features) {
      const tr = el('tr', undefined, f.in_graph ? 'ingraph' : ''); tr.dataset.id = f.node_id;
      tr.appendChild(el('td', f.node_id + (f.in_graph ? '' : ' (not in the graph)')));
      tr.appendChild(el('td', `${f.before.toPrecision(3)} \u2192 ${f.after.toPrecision(3)}`));
      if (f.in_graph) tr.addEventListener('mouseenter', () => hover(byId[f.node_id]));
      t.appendChild(tr);
    }
  } catch (e) { $('iverr').textContent = e.message; }
}

async function load() {
  try {
    G = await api('/api/graph/' + encodeURIComponent(slug));
  } catch (e) { $('loaderr').textContent = e.message; return; }
  for (const n of G.nodes) byId[n.node_id] = n;
  pinned = G.qParams.pinnedIds.filter(id => byId[id]);
  supernodes = G.qParams.supernodes.map(s => [...s]);
  $('title').textContent = 'graph ' + G.slug;
  const shown = Math.min(G.links.length, linkLimit());
  const links = shown < G.links.length ? `the ${shown} strongest of ${G.links.length} links; ?links=all draws every one` : `${G.links.length} links`;
  $('prompt').textContent = (G.metadata.prompt || G.metadata.prompt_tokens.join('')) + `  (${G.nodes.length} nodes, ${links})`;
  draw();
  document.body.dataset.ready = '1';
}
$('pinbtn').addEventListener('click', () => shown && togglePin(shown.node_id));
$('groupbtn').addEventListener('click', group);
$('savebtn').addEventListener('click', save);
$('ivbtn').addEventListener('click', intervene);
load();
"""
)
