// Lookbook editor console: keyboard curation, bulk actions and import progress over the console JSON API.
"use strict";
(function () {
  const meta = (name) => (document.querySelector(`meta[name="${name}"]`) || {}).content || "";
  const csrf = meta("csrf-token");
  const base = meta("console-base");

  function toast(text, kind) {
    const box = document.getElementById("toasts");
    if (!box) return;
    const el = document.createElement("div");
    el.className = "toast " + (kind || "info");
    el.setAttribute("role", kind === "error" ? "alert" : "status");
    el.textContent = text;
    box.appendChild(el);
    setTimeout(() => el.remove(), kind === "error" ? 9000 : 3500);
  }

  async function post(path, body) {
    const response = await fetch(base + path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json", "x-csrf-token": csrf },
      body: JSON.stringify(body),
    });
    let data = {};
    try { data = await response.json(); } catch (e) { /* an empty or HTML body */ }
    if (response.status === 401) {
      toast("Your session expired: sign in again.", "error");
      setTimeout(() => { window.location.href = base + "/login?next=" + encodeURIComponent(location.pathname + location.search); }, 1200);
    }
    return { status: response.status, data };
  }

  // ------------------------------------------------------------------ looks grid
  function currentReason() {
    const code = (document.getElementById("reason-code") || {}).value || "";
    const note = ((document.getElementById("reason") || {}).value || "").trim();
    return [code, note].filter(Boolean).join(", ");
  }

  const grid = document.getElementById("grid");
  const cards = () => Array.from(document.querySelectorAll("article.look"));

  function render(card, look) {
    card.dataset.version = look.version;
    card.dataset.status = look.status;
    card.className = card.className.replace(/\bstatus-\w+/, "status-" + look.status);
    card.querySelector(".badge").textContent = look.status;
    const ver = card.querySelector(".ver");
    if (ver) ver.textContent = look.version;
  }

  async function setStatus(card, status) {
    if (!card || card.classList.contains("busy")) return;
    card.classList.add("busy");
    const reason = currentReason();
    try {
      const { status: code, data } = await post(`/api/looks/${card.dataset.lookId}/status`,
        { status, version: Number(card.dataset.version), reason });
      if (code === 200) {
        render(card, data.look);
        card.classList.add("done");
        toast(`Look ${card.dataset.lookId.slice(0, 8)} ${status}.`, "ok");
      } else if (code === 409) {
        if (data.look) render(card, data.look);
        card.classList.add("conflict");
        toast("Not saved: " + data.error, "error");
      } else if (code !== 401) {
        toast("Not saved: " + (data.error || `HTTP ${code}`), "error");
      }
    } catch (e) {
      toast("Not saved: the console cannot reach the server (" + e + ")", "error");
    } finally {
      card.classList.remove("busy");
    }
  }

  function focusCard(index) {
    const all = cards();
    if (!all.length) return;
    const i = Math.max(0, Math.min(all.length - 1, index));
    all[i].focus();
    all[i].scrollIntoView({ block: "nearest" });
  }

  function columns() {
    const all = cards();
    if (all.length < 2) return 1;
    const top = all[0].offsetTop;
    const n = all.findIndex((c) => c.offsetTop !== top);
    return n === -1 ? all.length : n;
  }

  async function bulk(status) {
    const picked = cards().filter((c) => c.querySelector("input.select").checked);
    if (!picked.length) { toast("Select looks first (x, or the check boxes).", "error"); return; }
    const reason = currentReason();
    const items = picked.map((c) => ({ look_id: c.dataset.lookId, version: Number(c.dataset.version) }));
    const { status: code, data } = await post("/api/looks/bulk-status", { status, items, reason });
    if (!data.results) { toast("Not saved: " + (data.error || `HTTP ${code}`), "error"); return; }
    let ok = 0;
    for (const result of data.results) {
      const card = picked.find((c) => c.dataset.lookId === result.look_id);
      if (!card) continue;
      if (result.ok) { render(card, result.look); card.classList.add("done"); ok += 1; card.querySelector("input.select").checked = false; }
      else { card.classList.add("conflict"); toast(result.error, "error"); }
    }
    toast(`${ok} of ${items.length} looks ${status}.`, ok === items.length ? "ok" : "error");
  }

  if (grid) {
    grid.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-action]");
      if (button) setStatus(button.closest("article.look"), button.dataset.action);
    });
    const all = document.getElementById("select-all");
    if (all) all.addEventListener("change", () => cards().forEach((c) => { c.querySelector("input.select").checked = all.checked; }));
    document.getElementById("bulk-approve").addEventListener("click", () => bulk("approved"));
    document.getElementById("bulk-reject").addEventListener("click", () => bulk("rejected"));

    document.addEventListener("keydown", (event) => {
      if (event.ctrlKey || event.metaKey || event.altKey) return;
      if (event.target.matches("input, textarea, select")) return;
      const all = cards();
      const card = document.activeElement && document.activeElement.closest ? document.activeElement.closest("article.look") : null;
      const index = card ? all.indexOf(card) : -1;
      const keys = { a: "approved", r: "rejected", f: "featured", p: "pending" };
      if (keys[event.key]) {
        event.preventDefault();
        if (card) { setStatus(card, keys[event.key]).then(() => focusCard(index + 1)); }
        else toast("Pick a look first: click it or use the arrow keys.", "error");
      } else if (event.key === "x" || event.key === " ") {
        if (card) { event.preventDefault(); const box = card.querySelector("input.select"); box.checked = !box.checked; }
      } else if (event.key === "ArrowRight") { event.preventDefault(); focusCard(index + 1); }
      else if (event.key === "ArrowLeft") { event.preventDefault(); focusCard(index - 1); }
      else if (event.key === "ArrowDown") { event.preventDefault(); focusCard(index < 0 ? 0 : index + columns()); }
      else if (event.key === "ArrowUp") { event.preventDefault(); focusCard(index - columns()); }
    });
  }

  // ------------------------------------------------------------------ imports
  const jobs = document.getElementById("jobs");
  const form = document.getElementById("start-import");

  function jobRow(job) {
    const tr = document.createElement("tr");
    tr.dataset.jobId = job.job_id;
    tr.dataset.state = job.state;
    const when = new Date(job.created_at * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
    const cells = [job.job_id.slice(0, 12), job.source, job.state, "", job.imported, job.skipped, job.failed, job.requested_by, when];
    cells.forEach((value, i) => {
      const td = document.createElement("td");
      if (i === 3) {
        const bar = document.createElement("progress");
        bar.max = 1; bar.value = job.progress;
        td.append(bar, ` ${job.processed}/${job.total}`);
      } else td.textContent = value;
      if (i === 2) td.className = "state";
      tr.appendChild(td);
    });
    if (job.error) tr.title = job.error;
    return tr;
  }

  async function refreshJobs() {
    const response = await fetch(base + "/api/imports", { credentials: "same-origin" });
    if (!response.ok) return false;
    const { jobs: list } = await response.json();
    const body = jobs.querySelector("tbody");
    body.replaceChildren(...list.map(jobRow));
    return list.some((j) => j.state === "queued" || j.state === "running");
  }

  async function poll() {
    const active = await refreshJobs().catch(() => false);
    if (active) setTimeout(poll, 1500);
  }

  if (jobs) {
    if (jobs.querySelector('tr[data-state="queued"], tr[data-state="running"]')) setTimeout(poll, 1500);
    if (form) form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const source = document.getElementById("import-source").value;
      const { status: code, data } = await post("/api/imports", { source });
      if (code === 202) { toast(`Import ${data.job.job_id.slice(0, 12)} started.`, "ok"); poll(); }
      else toast("Import not started: " + (data.error || `HTTP ${code}`), "error");
    });
  }
})();
