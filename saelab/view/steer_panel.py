"""The steering panel's job runner, shared by the app's home page and every live feature page.

`steerJob(req, ui)` posts a steering request, shows its progress (a bar, "generation i/n, token k/m"), lets
the Cancel button stop it, and hands back the finished job, so both pages report a run the same way;
`enterStarts(button, ...inputs)` makes Enter in any of the panel's inputs press its Generate button.
Everything from the server reaches the page as text (`textContent`), never as markup.
"""

PROGRESS_CSS = """
.progress{width:300px;height:10px;background:#eee;display:inline-block;vertical-align:middle}
.progress>span{display:block;height:10px;width:0;background:#3b8ee8}
.warn{color:#b60;font-size:.9em}
"""

STEER_JS = """
async function steerJob(req, ui) {  // ui: {bar, status, cancel, button}; -> the done job, or null if cancelled
  const call = async (url, opts) => {
    const r = await fetch(url, opts);
    const body = await r.json().catch(() => ({detail: r.statusText}));
    if (!r.ok) throw new Error(typeof body.detail === 'string' ? body.detail : JSON.stringify(body.detail));
    return body;
  };
  let id = null;
  ui.bar.style.width = '0'; ui.status.textContent = 'starting'; ui.button.disabled = true;
  ui.cancel.onclick = () => { if (id) call('/api/jobs/' + id + '/cancel', {method: 'POST'}).catch(() => {}); };
  try {
    id = (await call('/api/steer', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(req)})).job;
    ui.cancel.disabled = false;
    while (true) {
      const j = await call('/api/jobs/' + id);
      const frac = j.status === 'done' ? 1 : (j.generation + (j.status === 'running' ? j.tokens / Math.max(1, j.max_tokens) : 0)) / Math.max(1, j.generations);
      ui.bar.style.width = (100 * Math.min(1, frac)).toFixed(1) + '%';
      ui.status.textContent = j.status === 'running' ? `running: generation ${Math.min(j.generation + 1, j.generations)}/${j.generations}, token ${j.tokens}/${j.max_tokens}`
        : j.status === 'done' ? `done: ${j.generations} generations of up to ${j.max_tokens} tokens in ${j.result.wall_s.toFixed(1)} s` : j.status;
      if (j.status === 'done') return j;
      if (j.status === 'error') throw new Error(j.error);
      if (j.status === 'cancelled') { ui.bar.style.width = '0'; return null; }
      await new Promise(r => setTimeout(r, 250));
    }
  } catch (e) { ui.bar.style.width = '0'; ui.status.textContent = 'error'; throw e; }
  finally { ui.cancel.disabled = true; ui.cancel.onclick = null; ui.button.disabled = false; }
}
function enterStarts(button, ...inputs) {  // Enter in a panel's input presses its Generate button
  for (const i of inputs) i.addEventListener('keydown', e => { if (e.key === 'Enter' && !button.disabled) { e.preventDefault(); button.click(); } });
}
"""
