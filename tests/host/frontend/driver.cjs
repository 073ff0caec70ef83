// Drives the real ComfyUI frontend in headless Debian Chromium for the Python harness (browser.py).
//
// Protocol: one JSON config as argv[2]; then one JSON command per stdin line, one JSON answer per
// stdout line ({ok: true, result} or {ok: false, error}). Commands:
//   {cmd: "load", name, workflow | template: "<module>/<name>", screenshot, keep}  -> load report
//   {cmd: "quit"}
// With keep, the page stays open for these, which act on it as a user's session would:
//   {cmd: "queue", prompt, workflow}   -> the server's answer to POST /prompt from this page (its client id,
//                                         so the page gets the run's messages), or {error, response}
//   {cmd: "run"}                       -> what the Run button does (app.queuePrompt): {queued, ui}
//   {cmd: "wait", promptId, timeoutMs} -> the page's execution messages for that prompt, once it ended
//   {cmd: "widgets", nodeIds}          -> {id: {title, type, widgets: {name: value}, options: {combo: [choices]}}}
//                                         (nodeIds null: every node)
//   {cmd: "set_widgets", values}       -> sets {id: {name: value}} as typing into the widgets does
//   {cmd: "frame", path, nodeIds, pad, viewport: [w, h], focus} -> a screenshot of those nodes, zoomed to fill
//   {cmd: "command", id}               -> runs a frontend command, as its menu entry or key does
//   {cmd: "click", text, exact}        -> clicks the first visible element showing that text
//   {cmd: "key", key}                  -> presses a key (Playwright's names: "Escape", "Control+Enter")
//   {cmd: "screenshot", path}          -> the page as it is
//   {cmd: "close"}
// Each load gets a new page with cleared web storage, so nothing one workflow leaves behind (the
// frontend persists the open workflow in localStorage) reaches the next; the pages share one
// persistent profile (a fresh --user-data-dir per session), so its HTTP cache is shared.
"use strict";
const readline = require("node:readline");
const { chromium } = require("playwright-core");

const config = JSON.parse(process.argv[2]);
const SELECTORS = ".p-toast-message, .p-dialog, [role=dialog], [role=alertdialog]";

// Runs in the page before its own scripts: records every toast and dialog the moment it enters the
// DOM (toasts with a `life` vanish again), and starts each page like a fresh browser.
function pageInit(selectors) {
  try {
    localStorage.clear();
    sessionStorage.clear();
  } catch {
    // about:blank, where a new page starts, has no storage of its own
  }
  const events = [];
  window.__prismHarness = { events };
  const record = (el) => {
    if (el.nodeType === 1 && el.matches(selectors) && !events.some((e) => e.el === el)) {
      events.push({ el, kind: el.matches(".p-toast-message") ? "toast" : "dialog", t: performance.now() });
    }
  };
  new MutationObserver((mutations) => {
    for (const m of mutations) {
      for (const node of m.addedNodes) {
        if (node.nodeType !== 1) continue;
        record(node);
        node.querySelectorAll(selectors).forEach(record);
      }
    }
  }).observe(document, { childList: true, subtree: true });
}

// In the page: the toasts and dialogs recorded since `since` (performance.now()), with their text
// read now, once the frontend has filled them in.
function uiMessages(since) {
  return window.__prismHarness.events
    .filter((e) => e.t >= since)
    .map((e) => ({ kind: e.kind, severity: (e.el.className.match(/p-toast-message-(\w+)/) || [])[1] || null,
                   text: (e.el.innerText || e.el.textContent || "").trim().replace(/\s+/g, " ").slice(0, 2000) }))
    // a dialog inside a dialog (PrimeVue nests role=dialog in .p-dialog) is reported once
    .filter((m, i, all) => all.findIndex((o) => o.text === m.text && o.kind === m.kind) === i);
}

// In the page: load a workflow the way the template browser does (app.loadGraphData after fetching
// the JSON from /api/workflow_templates/<module>/<name>.json) or a file drop does (the JSON as is).
// Returns the page time the load began, to tell its toasts and dialogs from the start-up's.
async function loadInPage({ name, workflow, template }) {
  const app = window.app;
  const api = window.comfyAPI.api.api;
  const since = performance.now();
  if (template) {
    const response = await fetch(api.apiURL(`/workflow_templates/${template}.json`));
    if (!response.ok) throw new Error(`template ${template}: HTTP ${response.status}`);
    workflow = await response.json();
  }
  if (workflow) await app.loadGraphData(workflow, true, true, name);  // neither: the page as the app opens it
  return since;
}

// In the page: frontends from about 1.4x no longer open a dialog for missing nodes or models: an
// "N errors found" card (data-testid error-overlay) shows instead, and its "View details" opens the
// side panel's errors tab, one group per kind of error (data-testid error-group-<kind>: missing-node,
// missing-model, ...). If the card is up now, read it and those groups, as a user would, then close
// the panel again. null where the frontend has no such card, or it is not shown.
async function errorOverlay() {
  const card = document.querySelector("[data-testid=error-overlay]");
  if (!card || !card.offsetParent) return null;
  const clean = (el) => (el.innerText || el.textContent || "").trim().replace(/\s+/g, " ").slice(0, 2000);
  const text = clean(card);
  const button = card.querySelector("[data-testid=error-overlay-see-errors]");
  let groups = null;
  if (button) {
    button.click();
    for (let i = 0; i < 50 && !document.querySelector("[data-testid^=error-group-]"); i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    groups = [...document.querySelectorAll("[data-testid^=error-group-]")]
      .filter((el) => el.getAttribute("data-testid") !== "error-group-display-message")
      .map((el) => ({ kind: el.getAttribute("data-testid").slice("error-group-".length), text: clean(el) }));
    document.querySelector("button[aria-label='Toggle properties panel']")?.click();
  }
  return { kind: "overlay", severity: "error", text, groups };
}

// In the page: nodes whose type the frontend does not know (it draws them red, as placeholders): an
// unregistered type, or a placeholder standing in for a registered one (its class is not the type's).
// Not `has_errors` alone: frontends up to about 1.3x set it only on placeholders, but later ones (1.49)
// set it on any node with an error (a missing model file, say) and clear it on placeholders.
// Ids as the workflow file has them: later frontends keep node ids as strings ("10" for 10).
function unknownNodes() {
  const registered = window.LiteGraph.registered_node_types;
  const graphs = [window.app.graph, ...(window.app.graph.subgraphs?.values?.() ?? [])];
  const fileId = (id) => (typeof id === "string" && /^-?\d+$/.test(id) ? Number(id) : id);
  return graphs.flatMap((g) => g.nodes.filter((n) => !(n.type in registered) || !(n instanceof registered[n.type]))
    .map((n) => ({ id: fileId(n.id), type: n.type })));
}

// In the page: keep the execution messages the app receives (the page's own client id gets them).
function recordExecution() {
  const api = window.comfyAPI.api.api;
  const events = (window.__prismHarness.execution = []);
  for (const type of ["execution_start", "executed", "execution_success", "execution_error", "execution_interrupted"]) {
    api.addEventListener(type, (e) => events.push({ type, detail: e.detail }));
  }
}

async function queueFromPage({ prompt, workflow }) {
  try {
    return { response: await window.comfyAPI.api.api.queuePrompt(0, { output: prompt, workflow }) };
  } catch (e) {
    return { error: String(e.message || e), response: e.response ?? null };
  }
}

function widgetValues(nodeIds) {
  const out = {};
  for (const id of nodeIds ?? window.app.graph.nodes.map((n) => n.id)) {
    const node = window.app.graph.getNodeById(id);
    if (!node) continue;
    const widgets = {};
    const options = {};
    for (const w of node.widgets ?? []) {
      widgets[w.name] = w.value;
      const values = w.options?.values;
      if (Array.isArray(values)) options[w.name] = values;  // a combo's choices, as its list shows them
    }
    out[id] = { title: node.title, type: node.type, widgets, options };
  }
  return out;
}

function setWidgetValues(values) {
  for (const [id, named] of Object.entries(values)) {
    const node = window.app.graph.getNodeById(Number(id));
    if (!node) throw new Error(`no node ${id}`);
    for (const [name, value] of Object.entries(named)) {
      const widget = node.widgets?.find((w) => w.name === name);
      if (!widget) throw new Error(`node ${id} (${node.type}) has no widget ${name}`);
      widget.value = value;
      widget.callback?.(value, window.app.canvas, node);
    }
  }
  window.app.graph.setDirtyCanvas(true, true);
}

// In the page: zoom and pan so that the nodes' bounding box (title bars included) fills the canvas.
function frameNodes({ nodeIds, pad }) {
  const canvas = window.app.canvas;
  const titleHeight = window.LiteGraph.NODE_TITLE_HEIGHT;
  const boxes = nodeIds.map((id) => window.app.graph.getNodeById(id)).filter(Boolean)
    .map((n) => [n.pos[0], n.pos[1] - titleHeight, n.pos[0] + n.size[0], n.pos[1] + n.size[1]]);
  if (!boxes.length) throw new Error(`none of the nodes ${nodeIds} is in the graph`);
  const [x0, y0, x1, y1] = [0, 1, 2, 3].map((k) => (k < 2 ? Math.min : Math.max)(...boxes.map((b) => b[k])));
  const [w, h] = [x1 - x0 + 2 * pad, y1 - y0 + 2 * pad];
  const el = canvas.canvas;
  const [cw, ch] = [el.clientWidth, el.clientHeight];
  const scale = Math.min(cw / w, ch / h);
  canvas.ds.scale = scale;
  canvas.ds.offset[0] = -(x0 - pad) + (cw / scale - w) / 2;
  canvas.ds.offset[1] = -(y0 - pad) + (ch / scale - h) / 2;
  canvas.setDirty(true, true);
  return { scale };
}

async function graphToPrompt() {
  const { output, workflow } = await window.app.graphToPrompt();
  return { output, workflow };
}

const state = { page: null };

async function closeKept() {
  if (state.page) await state.page.close();
  state.page = null;
}

async function load(context, command) {
  await closeKept();
  const page = await context.newPage();
  const consoleErrors = [];
  const pageErrors = [];
  const nativeDialogs = [];
  const failedRequests = [];
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push({ text: m.text(), url: m.location().url }); });
  page.on("pageerror", (e) => pageErrors.push(String(e.stack || e)));
  page.on("dialog", async (d) => { nativeDialogs.push({ type: d.type(), message: d.message() }); await d.dismiss(); });
  page.on("requestfailed", (r) => failedRequests.push({ url: r.url(), failure: r.failure()?.errorText }));
  page.on("response", (r) => { if (r.status() >= 400) failedRequests.push({ url: r.url(), failure: `HTTP ${r.status()}` }); });
  const times = {};
  const t0 = Date.now();
  const mark = (name) => { times[name] = Date.now() - t0; };
  try {
    await page.goto(config.url, { waitUntil: "load" });
    mark("page");
    // Ready: the app object exists and has opened its default graph (GraphView does that last), or,
    // for a new user (no settings yet), an empty one with the template browser over it.
    await page.waitForFunction(() => window.LiteGraph && window.app?.graph
                               && (window.app.graph.nodes?.length > 0 || document.querySelector(".p-dialog")), null,
                               { timeout: config.readyTimeoutMs, polling: 100 });
    mark("app");
    await page.waitForLoadState("networkidle", { timeout: 5000 }).catch(() => {});
    mark("idle");
    await page.evaluate(recordExecution);
    const startup = { consoleErrors: consoleErrors.splice(0), pageErrors: pageErrors.splice(0),
                      ui: await page.evaluate(uiMessages, 0) };
    const since = await page.evaluate(loadInPage, command);
    mark("loaded");
    // Let the frontend draw the graph and open whatever dialog or toast it decided on.
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    await page.waitForTimeout(config.settleMs);
    const ui = await page.evaluate(uiMessages, since);
    const overlay = await page.evaluate(errorOverlay);
    if (overlay) ui.push(overlay);
    const unknown = await page.evaluate(unknownNodes);
    let prompt = null;
    let promptError = null;
    try {
      prompt = await page.evaluate(graphToPrompt);
    } catch (e) {
      promptError = String(e.message || e);
    }
    const loadErrors = { console: consoleErrors.splice(0), page: pageErrors.splice(0) };
    mark("checked");
    if (command.screenshot) {
      // After the checks: fit the whole graph into view (the toolbar's "Zoom to fit"), as a README picture.
      // What this step logs is kept apart: it is the harness's doing, not the workflow's.
      await page.evaluate(() => window.app.extensionManager.command.execute("Comfy.Canvas.FitView"));
      await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
      await page.screenshot({ path: command.screenshot });
      mark("screenshot");
    }
    return { startup, ui, unknownNodes: unknown, consoleErrors: loadErrors.console, pageErrors: loadErrors.page,
             screenshotErrors: [...consoleErrors, ...pageErrors], nativeDialogs, failedRequests,
             prompt: prompt?.output ?? null, workflow: prompt?.workflow ?? null, promptError, times };
  } finally {
    if (command.keep) state.page = page;
    else await page.close();
  }
}

const nextFrame = () => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));

// The commands that act on the page a `load` with `keep` left open.
const onPage = {
  queue: (page, c) => page.evaluate(queueFromPage, { prompt: c.prompt, workflow: c.workflow }),
  async run(page) {
    const since = await page.evaluate(() => performance.now());
    const cardText = () => document.querySelector("[data-testid=error-overlay]")?.innerText ?? null;
    const before = await page.evaluate(cardText);
    const queued = await page.evaluate(() => window.app.queuePrompt(0));
    await page.evaluate(nextFrame);
    await page.waitForTimeout(config.settleMs);
    // Frontends with the error card (see errorOverlay) show the server's answer there, once it came:
    // wait (a while) for a toast or dialog, or for the card to appear or change.
    await page.waitForFunction(([t, b]) => window.__prismHarness.events.some((e) => e.t >= t)
                               || (document.querySelector("[data-testid=error-overlay]")?.innerText ?? null) !== b,
                               [since, before], { timeout: 10000, polling: 100 }).catch(() => {});
    await page.waitForTimeout(300);
    const ui = await page.evaluate(uiMessages, since);
    const overlay = await page.evaluate(errorOverlay);
    if (overlay && overlay.text !== (before ?? "").trim().replace(/\s+/g, " ").slice(0, 2000)) ui.push(overlay);
    // The server's validation errors as the frontend keeps them for its node badges and error panel.
    const nodeErrors = await page.evaluate(() => JSON.stringify(window.app.lastNodeErrors ?? null));
    return { queued, ui, nodeErrors };
  },
  async wait(page, c) {
    const ended = (id) => window.__prismHarness.execution.some((e) => e.detail?.prompt_id === id
      && ["execution_success", "execution_error", "execution_interrupted"].includes(e.type));
    await page.waitForFunction(ended, c.promptId, { timeout: c.timeoutMs ?? 600000, polling: 200 });
    await page.evaluate(nextFrame);
    return page.evaluate((id) => window.__prismHarness.execution.filter((e) => e.detail?.prompt_id === id), c.promptId);
  },
  widgets: (page, c) => page.evaluate(widgetValues, c.nodeIds),
  async command(page, c) {
    await page.evaluate((id) => window.app.extensionManager.command.execute(id), c.id);
    await page.waitForTimeout(config.settleMs);
  },
  async click(page, c) {
    await page.getByText(c.text, { exact: c.exact ?? false }).locator("visible=true").first().click();
    await page.waitForTimeout(config.settleMs);
  },
  async key(page, c) {
    await page.keyboard.press(c.key);
    await page.waitForTimeout(config.settleMs);
  },
  async screenshot(page, c) {
    await page.evaluate(nextFrame);
    await page.screenshot({ path: c.path });
  },
  set_widgets: (page, c) => page.evaluate(setWidgetValues, c.values),
  async frame(page, c) {
    if (c.viewport) await page.setViewportSize({ width: c.viewport[0], height: c.viewport[1] });
    if (c.focus) await page.evaluate(() => window.app.extensionManager.command.execute("Workspace.ToggleFocusMode"));
    await page.evaluate(nextFrame);
    const framed = await page.evaluate(frameNodes, { nodeIds: c.nodeIds, pad: c.pad ?? 20 });
    await page.evaluate(nextFrame);
    await page.waitForTimeout(300);  // DOM widgets (text areas) follow the canvas on the next frames
    await page.screenshot({ path: c.path });
    return framed;
  },
};

async function main() {
  const context = await chromium.launchPersistentContext(config.userDataDir, {
    executablePath: config.chromium,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
    viewport: { width: 1600, height: 1000 },
  });
  await context.addInitScript(pageInit, SELECTORS);
  const reply = (answer) => process.stdout.write(JSON.stringify(answer) + "\n");
  reply({ ok: true, result: { browser: context.browser()?.version() ?? "chromium" } });
  for await (const line of readline.createInterface({ input: process.stdin })) {
    const command = JSON.parse(line);
    if (command.cmd === "quit") break;
    try {
      let result;
      if (command.cmd === "load") result = await load(context, command);
      else if (command.cmd === "close") result = await closeKept();
      else if (onPage[command.cmd] && state.page) result = await onPage[command.cmd](state.page, command);
      else throw new Error(`unknown command ${command.cmd}, or no page kept open for it`);
      reply({ ok: true, result: result ?? null });
    } catch (e) {
      reply({ ok: false, error: String(e.stack || e) });
    }
  }
  await context.close();
}

main().catch((e) => {
  process.stdout.write(JSON.stringify({ ok: false, error: String(e.stack || e) }) + "\n");
  process.exit(1);
});
