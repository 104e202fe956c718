"""HTML for feature pages and the index, shared by the static dashboards and the web app.

Jinja2 with autoescaping on for every template: model text, tokens and explanations are data,
never markup (a `<script>` token shows as the text `<script>`). A feature page carries its charts as
numbers (the histogram's counts, the logit effects) that one shared script draws (page_script.py); a
static dashboard links its one style.css and page.js, the web app inlines both. Either opens offline.
"""

from __future__ import annotations

import json
import math

from jinja2 import DictLoader, Environment, select_autoescape
from markupsafe import Markup

from ..features.steering import DEFAULT_STRENGTH, SWEEP
from .page_script import hist_chart, page_script, writes_chart
from .steer_panel import PROGRESS_CSS, STEER_JS

CSS = (
    """
body{font-family:system-ui,sans-serif;margin:1.2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.4em} h2{font-size:1.1em;margin-top:1.4em;border-bottom:1px solid #ddd}
table{border-collapse:collapse} td,th{padding:2px 8px;text-align:left;vertical-align:top;font-size:.92em}
tr:nth-child(even){background:#f6f6f6}
.tok{font-family:ui-monospace,monospace;white-space:pre;border-radius:2px;padding:0 1px}
.peak{outline:1px solid #c33}
.ex{margin:3px 0;line-height:1.7;font-size:.9em;white-space:pre;overflow-x:auto;font-family:ui-monospace,monospace}
.ex b{font-weight:normal;border-radius:2px}
"""
    + "".join(f".s{k}{{background:rgba(255,120,0,{0.1 + 0.9 * (k - 1) / 8:.2f})}}" for k in range(1, 10))
    + """
.ex>i{display:inline-block;width:4.5em;color:#666;font-style:normal}
.muted{color:#777} .expl{font-size:1.1em;background:#eef5ff;padding:.4em .6em;border-radius:4px}
.cols{display:flex;gap:2em;flex-wrap:wrap} .cols>div{flex:1;min-width:250px}
.pill,#nearest b{display:inline-block;background:#eee;border-radius:3px;padding:0 4px;margin:1px;font-family:ui-monospace,monospace;white-space:pre;font-weight:normal}
#nearest b{margin-left:4px}
input,textarea,select,button{font-size:1em} textarea{width:100%}
.bar{height:8px;background:#e99} .err{color:#b00}
.logits i{display:block;height:8px;background:#e99} .logits.up i{background:#7aa5e8} .lv{font-family:ui-monospace,monospace;text-align:right;color:#444} #histogram rect{fill:#e8743b} #writes-chart rect{fill:#3b7de8}
"""
)

# tokLabel(t): a token as `token_label` shows it, for the pages' scripts (search results, fire-on-text)
TOKEN_JS = r"""function tokLabel(t) {  // newlines, tabs, CRs as symbols; a token of only spaces as open boxes
  const s = t.replace(/\n/g, '\u21b5').replace(/\t/g, '\u21e5').replace(/\r/g, '\u240d');
  return s.trim() ? s : ([...s].map(() => '\u2423').join('') || '\u2205');
}
"""

FEATURE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{{ f.sae }} feature {{ f.id }}</title>{{ style() }}</head><body>
<p><a href="{{ home }}" id="home">&larr; index</a>{% set prev = link(f.id - 1) if f.id > 0 else none %}{% set next = link(f.id + 1) if f.id + 1 < f.d_sae else none %}
{% if prev %} &middot; <a href="{{ prev }}" id="prev">&larr; feature {{ f.id - 1 }}</a>{% endif %}{% if next %} &middot; <a href="{{ next }}" id="next">feature {{ f.id + 1 }} &rarr;</a>{% endif %}
{% if prev or next %}<span class="muted" id="arrowkeys">(arrow keys)</span>{% endif %}</p>
<h1 id="title">{{ f.sae }} &middot; feature {{ f.id }}</h1>
<p class="muted">hookpoint {{ f.hookpoint }} &middot; {{ f.d_sae }} features</p>
{% if f.clt %}<div id="writes"><h2>Writes to layers</h2>
<p id="writes-summary">encoder at layer {{ f.clt.layer }} (latent {{ f.clt.local }} of that layer); writes to layers
 {{ f.clt.targets[0].layer }}..{{ f.clt.targets[-1].layer }}{% if f.clt.strongest is not none %}, strongest at {{ f.clt.strongest }}{% endif %}</p>
{{ writes_chart(f.clt) }}
<table id="writes-table"><tr><th>layer</th><th>decoder norm</th><th></th></tr>{% for t in f.clt.targets %}
<tr class="write"><td>{{ t.layer }}</td><td class="norm">{{ "%.4g"|format(t.norm) }}</td><td><div class="bar" style="width:{{ (120 * t.rel)|round(1) }}px"></div></td></tr>{% endfor %}</table>
<p class="muted">raw-space norm of its decoder into each layer's MLP output (a cross-layer transcoder latent)</p></div>{% endif %}
{% if f.explanation %}<p class="expl" id="explanation">{{ f.explanation }}</p>
{% else %}<p class="muted" id="explanation">no explanation yet</p>{% endif %}
{% if f.scores %}<table id="scores"><tr><th>scorer</th><th>metric</th><th>value</th><th>chance</th></tr>
{% for s in f.scores %}<tr class="score"><td>{{ s.scorer }}{% if s.validity in ("at chance", "below chance") %} <span class="muted" title="this scorer did not tell the run's explanations from shuffled ones (saelab score --validity)">({{ s.validity }})</span>{% endif %}</td>{% if s.ok %}<td>{{ s.metric }}</td><td class="scoreval">{{ "%.3f"|format(s.value) }}</td>
<td class="muted">{{ "%.2f"|format(s.chance) if s.chance is not none else "" }}</td>{% else %}<td colspan="3" class="muted">failed: {{ s.error or "no result" }}</td>{% endif %}</tr>
{% endfor %}</table>{% if f.explained_by %}<p class="muted">from interpretation run {{ f.explained_by }}</p>{% endif %}{% endif %}
<div class="cols"><div>
<h2>Activation density</h2>
<p id="density">fires on {{ f.fires }} of {{ f.n_positions }} positions
 ({{ "%.4g"|format(100 * f.density) }}%{% if f.density > 0 %}, log10 {{ "%.2f"|format(log10(f.density)) }}{% endif %});
 max {{ "%.3g"|format(f.max_act) }}, mean {{ "%.3g"|format(f.mean_act) }}</p>
{{ hist_chart(f.hist) }}
</div><div>
<h2>Promoted tokens</h2>
{% if f.promoted %}<table id="promoted" class="logits up"></table>
<h2>Suppressed tokens</h2>
<table id="suppressed" class="logits"></table>{{ logit_data(f) }}
<p class="muted">{{ f.logit_note or "decoder direction through the final norm and unembedding" }}</p>
{% else %}<p class="muted">not available (the SAE's output width is not the residual stream's)</p>{% endif %}
</div><div>
<h2>Nearest features</h2>
<table id="nearest">{% for n in f.nearest %}{% set url = link(n.id) %}
<tr><td>{% if url %}<a href="{{ url }}">{{ n.id }}</a>{% else %}<span class=na>{{ n.id }}</span>{% endif %}<td>{{ "%.3f"|format(n.cos) }}<td>{{ n.explanation or "" }}{% for t in n.top_tokens %}<b>{{ token_label(t) }}</b>{% endfor %}{% endfor %}</table>
<p class="muted">cosine of decoder directions</p>
</div></div>
{% if live %}<h2>Test this feature on your own text</h2>
<textarea id="trytext" rows="2">{{ f.top[0].tokens|join("") if f.top else "" }}</textarea><br><button id="trybtn">Show activations</button>
<span id="tryerr" class="err"></span><div id="trytokens" class="ex"></div>
<h2>Steer with this feature</h2><style>{{ progress_css }}</style>
<p>Prompt <input id="steerprompt" size="50" value="My favourite thing is"> <button id="steerbtn">Generate</button>
<button id="steercancel" disabled>Cancel</button>
<span class="muted">clamp to {{ strength }} &times; max activation, and {{ sweep|join("×, ") }}× of that (same seed, 30 tokens)</span></p>
{% if not f.max_act > 0 %}<p class="warn" id="neverfired">this feature never fired on the cached tokens (max activation 0):
a multiple of its max activation is 0, so clamping it does not steer</p>{% endif %}
<p><span class="progress"><span id="steerbar"></span></span> <span id="steerstate" class="muted"></span>
<span id="steererr" class="err"></span></p><div id="steerwarn"></div><div id="steerout"></div>
<script>{{ steer_js }}{{ token_js }}
document.getElementById('trybtn').addEventListener('click', async () => {
  const out = document.getElementById('trytokens'), err = document.getElementById('tryerr'); out.replaceChildren(); err.textContent = '';
  const r = await fetch('/api/fire', {method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({sae: {{ f.sae|tojson }}, text: document.getElementById('trytext').value, top: 1, feature: {{ f.id }}})});
  const body = await r.json().catch(() => ({detail: r.statusText}));
  if (!r.ok) { err.textContent = typeof body.detail === 'string' ? body.detail : JSON.stringify(body.detail); return; }
  const mx = Math.max(1e-9, body.max_act, ...body.tokens.map(t => t.act));  // this feature's own scale
  for (const t of body.tokens) {
    const b = document.createElement('b'); b.textContent = tokLabel(t.token); b.title = t.act.toFixed(3);
    if (t.act > 0) b.className = 's' + (1 + Math.min(8, Math.floor(8 * t.act / mx)));
    out.appendChild(b);
  }
});
document.getElementById('steerbtn').addEventListener('click', async () => {  // the app's steering job, this feature
  const $ = id => document.getElementById(id), out = $('steerout');
  out.replaceChildren(); $('steerwarn').replaceChildren(); $('steererr').textContent = '';
  try {
    const j = await steerJob({sae: {{ f.sae|tojson }}, prompt: $('steerprompt').value, max_new_tokens: 30,
      strengths: {{ sweep|tojson }}, edits: [{latent: {{ f.id }}, op: 'clamp', value: {{ strength|tojson }}, relative: true}]},
      {bar: $('steerbar'), status: $('steerstate'), cancel: $('steercancel'), button: $('steerbtn')});
    if (j) {
      for (const w of j.result.warnings || []) { const p = document.createElement('p'); p.className = 'warn'; p.textContent = w; $('steerwarn').appendChild(p); }
      const rows = [['unsteered', j.result.unsteered]].concat(j.result.sweep.map(v =>
        [`\\u00d7${v.strength}: clamp \\u2192 ${v.edits[0].value.toPrecision(3)}` + (v.degenerate ? ` (degenerate: ${v.degenerate})` : ''), v.text]));
      for (const [head, text] of rows) {
        const p = document.createElement('p'); p.className = 'steered';
        const h = document.createElement('b'); h.textContent = head + ': '; p.appendChild(h);
        const pr = document.createElement('span'); pr.className = 'muted'; pr.textContent = j.result.prompt; p.appendChild(pr);
        p.appendChild(document.createTextNode(text.replace(/\\n/g, '\\u21b5'))); out.appendChild(p);
      }
    }
  } catch (e) { $('steererr').textContent = e.message; }
});
enterStarts(document.getElementById('steerbtn'), document.getElementById('steerprompt'));
addEventListener('DOMContentLoaded', () => document.querySelectorAll('#top .ex, .range .ex, .exset .ex').forEach(ex => {
  ex.style.cursor = 'pointer'; ex.title = 'test this example as your own text';
  ex.addEventListener('click', () => {  // an example opens in the box above, with this feature's activations
    document.getElementById('trytext').value = [...ex.childNodes].slice(1).map(n => n.textContent).join('')
      .replace(/\\u21b5/g, '\\n').replace(/\\u21e5/g, '\\t').replace(/\\u240d/g, '\\r').replace(/\\u2423/g, ' ').replace(/\\u2205/g, '');
    document.getElementById('trybtn').click(); document.getElementById('trytext').scrollIntoView();
  });
}));
</script>{% endif %}
<h2>Top activations</h2>
<div id="top">{% for e in f.top %}{{ example(e, f.max_act) }}{% else %}<p class="muted">this feature never fired on the cached tokens</p>{% endfor %}</div>
{% for r in f.ranges %}{% if r.examples %}
<h2>Activations in ({{ "%.3g"|format(r.lo) }}, {{ "%.3g"|format(r.hi) }}] &middot; {{ r.count }} positions</h2>
<div class="range">{% for e in r.examples %}{{ example(e, f.max_act) }}{% endfor %}</div>
{% endif %}{% endfor %}
{% if f.example_sets %}<h2>Examples of the interpretation run</h2>{% for st in f.example_sets %}
<h3>{{ st.kind }}: {{ st.label }}</h3><div class="exset" id="set-{{ st.kind }}">{% for e in st.examples %}{{ example(e, f.max_act) }}{% endfor %}</div>
{% endfor %}{% endif %}
{{ script() }}</body></html>"""

INDEX = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{{ name }} features</title>
{{ style() }}</head><body>
<h1>{{ name }}</h1>
<p class="muted" id="counts">{% if rows|length < d_sae %}{{ rows|length }} of {{ d_sae }}{% else %}{{ d_sae }}{% endif %} features at {{ hookpoint }} &middot; {{ n_positions }} cached positions &middot; {{ n_explained }} explained</p>
<img src="density.png" alt="feature density histogram" style="max-width:520px">
<p><input id="q" placeholder="filter by explanation or token; 26 or #26 + Enter opens feature 26" size="50"></p>
<table id="features"><thead><tr><th>feature</th><th>density</th><th>max</th><th>score</th><th>explanation</th><th>top tokens</th></tr></thead><tbody>
{% for s in rows %}<tr data-id="{{ s.id }}"><td><a href="features/{{ s.id }}.html">{{ s.id }}</a></td><td>{{ "%.3g"|format(s.density) }}</td><td>{{ "%.3g"|format(s.max_act) }}</td>
<td>{{ "%.3f"|format(s.score) if s.score is not none else "" }}</td><td>{{ s.explanation or "" }}</td><td>{% for t in s.top_tokens %}<span class="pill">{{ token_label(t) }}</span>{% endfor %}</td></tr>
{% endfor %}</tbody></table>
<script>
const byId = q => { const m = /^#?(\\d+)$/.exec(q.trim()); return m ? document.querySelector(`#features tr[data-id="${+m[1]}"]`) : null; };
document.getElementById('q').addEventListener('input', e => {  // an id shows that feature; text filters the rows
  const q = e.target.value.toLowerCase(), hit = byId(q);
  for (const tr of document.querySelectorAll('#features tbody tr'))
    tr.style.display = (hit ? tr === hit : tr.textContent.toLowerCase().includes(q)) ? '' : 'none';
});
document.getElementById('q').addEventListener('keydown', e => {  // Enter on an id opens its page
  const hit = e.key === 'Enter' && byId(e.target.value);
  if (hit) location.href = hit.querySelector('a').href;
});
</script></body></html>"""


def visible(t: str) -> str:
    """Whitespace a reader can see: newlines and tabs as symbols (still escaped by Jinja)."""
    return t.replace("\n", "\u21b5").replace("\t", "\u21e5")


def token_label(t: str) -> str:
    """A token shown on its own (a pill, a highlighted token): newlines, tabs and carriage returns as
    symbols, and a token of only spaces as open boxes, so no token is a blank box."""
    s = visible(t).replace("\r", "\u240d")
    return s if s.strip() else ("".join("\u2423" for _ in s) or "\u2205")


def logit_data(f: dict) -> Markup:
    """The promoted and suppressed tokens as JSON for PAGE_JS: each its label as `token_label` shows it (no
    blank pill) and its effect to 4 significant digits (a 100 px bar is off by < 0.1 px). Safe in a script
    element: `<`, `>`, `&` are escaped as JSON's \\u003c etc., so a token `</script>` stays text."""
    data = {
        k: [[token_label(t["token"]), float(f"{t['logit']:.4g}")] for t in f[k]] for k in ("promoted", "suppressed")
    }
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    for ch in "<>&":
        text = text.replace(ch, f"\\u{ord(ch):04x}")
    return Markup('<script type="application/json" id="logits">') + Markup(text) + Markup("</script>")


def level(v: float, mx: float) -> int:
    """Shade class 1..9 of a positive activation on the feature's own scale (CSS .s1 .. .s9)."""
    return 1 if mx <= 0 else 1 + min(8, int(8 * v / mx))


def _text(s: str) -> str:
    """Escaped for an element's text: `&`, `<` and `>` (quotes are text there; `&#34;` would be 5 bytes)."""
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def example(e, mx: float) -> Markup:
    """One example line: its value, then its tokens as text, each token that fires (and the peak) in a bare
    `<b>`. Their shade, activation (the hover title) and the peak mark come as one datum of the line for the
    page script, `data-f=P;SHADES;ACTS`: P which `<b>` is the peak (empty: none), SHADES one digit per `<b>`
    (its class s1..s9, 0: none), ACTS the activations to 3 decimals (`.058`). Tokens are text: `&`, `<`, `>`
    escaped."""
    parts, shades, acts, peak = [], [], [], ""
    for k, (t, a) in enumerate(zip(e.tokens, e.acts)):
        if a > 0 or k == e.peak:
            peak = len(shades) if k == e.peak else peak
            shades.append(str(level(a, mx)) if a > 0 else "0")
            acts.append(f"{a:.3f}".removeprefix("0"))
            parts.append(f"<b>{_text(token_label(t))}</b>")
        else:
            parts.append(_text(visible(t)))
    data = f" data-f={peak};{''.join(shades)};{','.join(acts)}" if shades else ""
    return Markup(f"<p class=ex{data}><i>{e.value:.2f}</i>{''.join(parts)}</p>")


def _env() -> Environment:
    env = Environment(
        loader=DictLoader({"feature.html": FEATURE, "index.html": INDEX}),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    env.globals.update(
        css=Markup(CSS),  # our own constant stylesheet: escaping it breaks `.cols>div`
        visible=visible,
        token_label=token_label,
        example=example,
        hist_chart=hist_chart,
        writes_chart=writes_chart,
        logit_data=logit_data,
        log10=math.log10,
        steer_js=Markup(STEER_JS),
        token_js=Markup(TOKEN_JS),  # our own constant script and style (steer_panel.py)
        progress_css=Markup(PROGRESS_CSS),
    )
    return env


ENV = _env()


def _style(css_href: str | None):
    """A page's stylesheet: linked (the static dashboard's one shared style.css) or inline (the app)."""
    return lambda: (
        Markup('<link rel="stylesheet" href="%s">') % css_href
        if css_href
        else Markup("<style>") + Markup(CSS) + Markup("</style>")
    )


def feature_page(
    view: dict, link, home: str, css_href: str | None = None, live: bool = False, js_href: str | None = None
) -> str:
    """`link(j)` -> URL of feature j's page (None: not shown, no link); `home` -> URL of the index;
    `css_href` / `js_href`: URLs of the shared stylesheet and page script (None: inline); `live`: served by
    the web app (adds "test this feature on your own text", which needs the model)."""
    return ENV.get_template("feature.html").render(
        f=view,
        link=link,
        home=home,
        style=_style(css_href),
        script=lambda: page_script(js_href),
        live=live,
        strength=DEFAULT_STRENGTH,
        sweep=list(SWEEP),
    )


def index_page(
    name: str,
    d_sae: int,
    hookpoint: str,
    n_positions: int,
    rows: list[dict],
    n_explained: int,
    css_href: str | None = None,
) -> str:
    return ENV.get_template("index.html").render(
        name=name,
        d_sae=d_sae,
        hookpoint=hookpoint,
        n_positions=n_positions,
        rows=rows,
        n_explained=n_explained,
        style=_style(css_href),
    )
