"""The one script every feature page runs: it draws the page's charts from the numbers the page carries.

A page ships its numbers, not its drawing: the histogram as `<svg id="histogram" data-counts="0,3,7,.."
data-hi="3.21">` (24 counts and the top edge instead of 24 SVG bars with their hover titles), the logit
lists as one JSON block `<script type="application/json" id="logits">` of [token label, effect] pairs
(render.logit_data), and a cross-layer latent's writes as `<svg id="writes-chart" data-norms=".."
data-layers="..">`. PAGE_JS draws them (the SVG the pages used to inline: a rect with a hover title per
bin, both axes; the logit rows: token, value, bar on the scale both lists share), shades each example's
firing tokens from the line's data (render.example), titles the nearest features not in a subset
dashboard, and binds the arrow keys to the previous / next feature. A static dashboard writes it once as
OUT/page.js (one file the browser caches; a `<script src>` loads from the disk too); the web app inlines it.
"""

from __future__ import annotations

from markupsafe import Markup

# the charts' geometry: a bar area CHART_W wide from x = CHART_LEFT, HIST_H / WRITES_H tall, labels below
CHART_W, CHART_LEFT, HIST_H, WRITES_H = 320, 40, 90, 70

PAGE_JS = r"""(() => {  // saelab feature page: charts from the page's data- numbers, arrow keys
const NS = 'http://www.w3.org/2000/svg', W = @W@, L = @L@;
const g = (x, p) => String(+(+x).toPrecision(p));  // Python's %.3g / %.4g (plain notation)
const nums = s => (s || '').split(',').filter(Boolean).map(Number);
const add = (parent, tag, attrs, text) => {
  const e = parent.appendChild(document.createElementNS(NS, tag));
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
};
function chart(svg, vals, title, yTop, xs, yName) {  // bars from 0 to the largest value, axes, labels
  const H = +svg.getAttribute('height') - 16, top = Math.max(...vals), bw = W / vals.length;
  vals.forEach((v, i) => {
    const h = H * v / top;
    add(add(svg, 'rect', {x: (L + i * bw).toFixed(1), y: (H - h).toFixed(1), width: Math.max(bw - 1, 1).toFixed(1),
      height: h.toFixed(1)}), 'title', {}, title(i));
  });
  add(svg, 'path', {d: `M${L - 2} 0V${H}H${L + W}`, stroke: '#999', fill: 'none'});
  add(svg, 'text', {class: 'ycount', x: L - 4, y: 9, 'font-size': 10, 'text-anchor': 'end'}, yTop);
  add(svg, 'text', {x: L - 4, y: H, 'font-size': 10, 'text-anchor': 'end'}, '0');
  if (yName) add(svg, 'text', {x: 0, y: Math.floor(H / 2) + 4, 'font-size': 10}, yName);
  add(svg, 'text', {x: L, y: H + 13, 'font-size': 11}, xs[0]);
  add(svg, 'text', {x: L + W / 2, y: H + 13, 'font-size': 10, 'text-anchor': 'middle'}, xs[1]);
  add(svg, 'text', {x: L + W, y: H + 13, 'font-size': 11, 'text-anchor': 'end'}, xs[2]);
}
const hist = document.getElementById('histogram');
if (hist) {  // bins of equal width over (0, hi], as numpy's histogram edges: i * (hi / n), the last one hi
  const c = nums(hist.dataset.counts), hi = +hist.dataset.hi, n = c.length, edge = i => i === n ? hi : i * (hi / n);
  chart(hist, c, i => `(${g(edge(i), 3)}, ${g(edge(i + 1), 3)}]: ${c[i]}`, Math.max(...c).toLocaleString('en-US'),
    ['0', 'activation', g(hi, 3)], 'count');
}
const wr = document.getElementById('writes-chart');
if (wr) {
  const v = nums(wr.dataset.norms), ly = nums(wr.dataset.layers);
  chart(wr, v, i => `layer ${ly[i]}: ${g(v[i], 4)}`, g(Math.max(...v), 3), [ly[0], 'layer', ly[ly.length - 1]]);
}
const lg = document.getElementById('logits');  // {promoted: [[token label, effect], ..], suppressed: [..]}
if (lg) {
  const d = JSON.parse(lg.textContent), all = d.promoted.concat(d.suppressed);
  const lmax = Math.max(1e-9, ...all.map(([, v]) => Math.abs(v)));  // both lists share one scale
  for (const id of ['promoted', 'suppressed']) for (const [tok, v] of d[id]) {
    const tr = document.getElementById(id).insertRow(), cell = () => tr.insertCell();
    const pill = cell().appendChild(document.createElement('span'));
    pill.className = 'pill'; pill.textContent = tok;
    const lv = cell(); lv.className = 'lv'; lv.textContent = (v < 0 ? '' : '+') + v.toFixed(2);
    cell().appendChild(document.createElement('i')).style.width = (100 * Math.abs(v) / lmax).toFixed(1) + 'px';
  }
}
document.querySelectorAll('.ex[data-f]').forEach(ex => {  // each firing token: shade, activation, peak mark
  const [p, s, a] = ex.dataset.f.split(';'), acts = a.split(',');
  ex.querySelectorAll('b').forEach((b, k) => {
    b.title = (+acts[k]).toFixed(3);
    if (s[k] !== '0') b.className = 's' + s[k];
    if (p !== '' && k === +p) b.classList.add('peak');
  });
});
document.querySelectorAll('#nearest .na').forEach(s => { s.title = 'not in this dashboard'; });
document.addEventListener('keydown', e => {  // arrow keys: the previous / next feature, outside text boxes
  if (e.target.closest('input,textarea,select')) return;
  const a = document.getElementById(e.key === 'ArrowLeft' ? 'prev' : e.key === 'ArrowRight' ? 'next' : '');
  if (a) location.href = a.href;
});
})();
""".replace("@W@", str(CHART_W)).replace("@L@", str(CHART_LEFT))


def _csv(xs) -> str:
    return ",".join(xs)


def hist_chart(h: dict) -> Markup:
    """The histogram's placeholder: its counts and top edge (numbers only; PAGE_JS draws the bars)."""
    counts, edges = h["counts"], h["edges"]
    if not counts or max(counts) == 0:
        return Markup('<p class="muted">no activations</p>')
    return Markup(
        f'<svg id="histogram" width="{CHART_LEFT + CHART_W}" height="{HIST_H + 16}" role="img" '
        f'aria-label="activation histogram" data-counts="{_csv(str(int(c)) for c in counts)}" '
        f'data-hi="{float(edges[-1])!r}"></svg>'
    )


def writes_chart(clt: dict) -> Markup:
    """A cross-layer latent's decoder norm into each layer it writes to, as numbers for PAGE_JS."""
    ts = clt["targets"]
    if max((t["norm"] for t in ts), default=0.0) <= 0:
        return Markup('<p class="muted">every decoder norm is 0</p>')
    norms, layers = _csv(f"{t['norm']:.6g}" for t in ts), _csv(str(int(t["layer"])) for t in ts)
    return Markup(
        f'<svg id="writes-chart" width="{CHART_LEFT + CHART_W}" height="{WRITES_H + 16}" role="img" '
        f'aria-label="decoder norm into each layer" data-norms="{norms}" data-layers="{layers}"></svg>'
    )


def page_script(js_href: str | None) -> Markup:
    """The page's script tag: the static dashboard's shared page.js, or PAGE_JS inline (the app)."""
    if js_href:
        return Markup('<script src="%s"></script>') % js_href
    return Markup("<script>") + Markup(PAGE_JS) + Markup("</script>")
