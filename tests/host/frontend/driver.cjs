// Drives the real ComfyUI frontend in headless Debian Chromium for the Python harness (browser.py).
//
// Protocol: one JSON config as argv[2]; then one JSON command per stdin line, one JSON answer per
// stdout line ({ok: true, result} or {ok: false, error}). Commands:
//   {cmd: "load", name, workflow | template: "<module>/<name>", screenshot}  -> load report
//   {cmd: "quit"}
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
  await app.loadGraphData(workflow, true, true, name);
  return since;
}

// In the page: nodes whose type the frontend does not know (it draws them red, as placeholders).
function unknownNodes() {
  const registered = window.LiteGraph.registered_node_types;
  const graphs = [window.app.graph, ...(window.app.graph.subgraphs?.values?.() ?? [])];
  return graphs.flatMap((g) => g.nodes.filter((n) => n.has_errors || !(n.type in registered))
    .map((n) => ({ id: n.id, type: n.type })));
}

async function graphToPrompt() {
  const { output, workflow } = await window.app.graphToPrompt();
  return { output, workflow };
}

async function load(context, command) {
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
    // Ready: the app object exists and has opened its default graph (GraphView does that last).
    await page.waitForFunction(() => window.app?.graph?.nodes?.length > 0 && window.LiteGraph, null,
                               { timeout: config.readyTimeoutMs, polling: 100 });
    mark("app");
    await page.waitForLoadState("networkidle", { timeout: 5000 }).catch(() => {});
    mark("idle");
    const startup = { consoleErrors: consoleErrors.splice(0), pageErrors: pageErrors.splice(0),
                      ui: await page.evaluate(uiMessages, 0) };
    const since = await page.evaluate(loadInPage, command);
    mark("loaded");
    // Let the frontend draw the graph and open whatever dialog or toast it decided on.
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    await page.waitForTimeout(config.settleMs);
    const ui = await page.evaluate(uiMessages, since);
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
    await page.close();
  }
}

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
      reply({ ok: true, result: await load(context, command) });
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
