"""Headless Chromium through playwright-core (driver.cjs), from Python: find the tools, load workflows.

Needs Debian's chromium (/usr/bin/chromium, or CHROMIUM_PATH) and the npm package playwright-core
where Node finds it: NODE_PATH, ``npm install -g playwright-core``, or tests/host/frontend/node_modules
(gitignored). No browser is ever downloaded. Without either, ``missing_tools()`` says what to install.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
INSTALL_HINT = "apt-get install -y chromium && npm install -g playwright-core"


def chromium_path() -> str | None:
    """Debian's chromium, or the one CHROMIUM_PATH names."""
    for candidate in (os.environ.get("CHROMIUM_PATH"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def node_env() -> dict[str, str]:
    """The environment for `node`: NODE_PATH extended by the local and the global node_modules."""
    paths = [p for p in os.environ.get("NODE_PATH", "").split(os.pathsep) if p] + [str(HERE / "node_modules")]
    npm = shutil.which("npm")
    if npm:
        root = subprocess.run([npm, "root", "-g"], check=False, capture_output=True, text=True, timeout=30).stdout.strip()
        if root:
            paths.append(root)
    return {**os.environ, "NODE_PATH": os.pathsep.join(paths)}


def missing_tools() -> str | None:
    """None when node, playwright-core and chromium are all here; else a skip reason naming the install."""
    node = shutil.which("node")
    if node is None:
        return f"frontend checks skipped: Node.js not found (then: {INSTALL_HINT})"
    if chromium_path() is None:
        return f"frontend checks skipped: chromium not found (install: {INSTALL_HINT}, or set CHROMIUM_PATH)"
    found = subprocess.run([node, "-e", "require.resolve('playwright-core')"], check=False, env=node_env(),
                           capture_output=True, timeout=30)
    if found.returncode != 0:
        return f"frontend checks skipped: npm package playwright-core not found (install: {INSTALL_HINT})"
    return None


STARTUP_RESOURCES = ("/user.css", "/api/userdata", "comfy.templates.json", "favicon.ico")

# Chromium's console lines for a connection the page's content-security policy refused (the server's
# "connect-src 'self'"), each naming the URL: newer and older wordings, and the Fetch API's own line.
_CSP_REFUSED = (re.compile(r"^Connecting to '(?P<url>[^']+)' violates the following Content Security Policy directive"),
                re.compile(r"^Refused to connect to '(?P<url>[^']+)' because it violates"),
                re.compile(r"^Fetch API cannot load (?P<url>\S+?)\.? Refused to connect because it violates"))


def is_external(url: str | None) -> bool:
    """Whether `url` points off this machine: an http(s)/ws(s) URL whose host is not a loopback name or address.
    The test server listens on 127.0.0.1, and the machine has no network, so only such requests can be
    lookups the sandbox blocks (frontends from about 1.32 ask api.comfy.org which pack a node comes from,
    and 1.4x huggingface.co about missing models)."""
    parts = urllib.parse.urlsplit(url or "")
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        return False
    if parts.hostname == "localhost" or parts.hostname.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return True  # a name, not an address


@dataclass
class LoadReport:
    """What the frontend showed and made of one workflow (see driver.cjs for how each is gathered)."""

    name: str
    startup: dict  # console errors, page errors and toasts/dialogs while the app started, before the load
    ui: list[dict]  # toasts (with severity) and dialogs that appeared during the load: {kind, severity, text};
    # and the error card later frontends show instead (kind "overlay", with its details' groups: {kind, text})
    unknown_nodes: list[dict]  # {id, type} of nodes whose type the frontend has not registered
    console_errors: list[dict]
    page_errors: list[str]
    screenshot_errors: list  # logged while fitting the view for the screenshot (the harness's step, not checked)
    native_dialogs: list[dict]  # window.alert/confirm/prompt
    failed_requests: list[dict]  # context for console errors: {url, failure}
    prompt: dict | None  # app.graphToPrompt().output: the API-format prompt
    workflow: dict | None  # app.graphToPrompt().workflow: the graph as the frontend would save it
    prompt_error: str | None
    screenshot: Path | None
    times_ms: dict[str, int]  # since the page opened: page, app (ready), idle, loaded, checked, screenshot

    def blocked_lookup_url(self, error: dict) -> str | None:
        """The off-machine URL a console error is about, when that error says only that the request to it
        was refused or failed: a content-security-policy refusal naming it, or Chromium's "Failed to load
        resource" line for it (whose location is the resource). None for every other console error, and
        for any about a local URL (the test server's own requests fail the check as before)."""
        text = error["text"]
        for pattern in _CSP_REFUSED:
            match = pattern.match(text)
            if match:
                return match["url"] if is_external(match["url"]) else None
        if text.startswith("Failed to load resource") and is_external(error.get("url")):
            return error["url"]
        return None

    def blocked_lookups(self) -> list[str]:
        """The load's console errors and failed requests that are only network lookups to other hosts
        (blocked here: no network, and the server's content-security policy): reported, not failed."""
        lines = [f"console: {e['text']}" for e in self.console_errors if self.blocked_lookup_url(e)]
        lines += [f"request {r['url']}: {r['failure']}" for r in self.failed_requests if is_external(r["url"])]
        return lines

    def _startup_404(self, error: dict) -> bool:
        """A 'Failed to load resource' whose failed requests are all the frontend's own start-up files
        (user.css, userdata listings, the templates index, the favicon): these 404 on every fresh start,
        and Chromium's console line does not say which request it was, so it can land after the load."""
        local = [r for r in self.failed_requests if not is_external(r["url"])]  # blocked_lookups has the rest
        return (error["text"].startswith("Failed to load resource") and bool(local)
                and all(any(part in r["url"] for part in STARTUP_RESOURCES) for r in local))

    @staticmethod
    def _ui_problems(message: dict) -> list[str]:
        """A toast or dialog is a problem as it is. The error card of later frontends ("N errors found",
        see driver.cjs errorOverlay) is one per group of its details, except missing model files: older
        frontends do not report those on load either (the runs here put tiny models in their place, and the
        first-run test checks what Run says about them); missing_models() lists them. A card whose
        details could not be read is a problem as it is."""
        if message["kind"] != "overlay" or message.get("groups") is None:
            return [f"{message['kind']} ({message['severity'] or 'dialog'}): {message['text']}"]
        groups = [g for g in message["groups"] if g["kind"] != "missing-model"]
        if not message["groups"]:
            return [f"overlay ({message['severity']}), no details: {message['text']}"]
        return [f"overlay ({message['severity']}) {g['kind']}: {g['text']}" for g in groups]

    def missing_models(self) -> list[str]:
        """The error card's missing-model groups (reported, not failed: see _ui_problems)."""
        return [g["text"] for m in self.ui if m["kind"] == "overlay" for g in m.get("groups") or []
                if g["kind"] == "missing-model"]

    def problems(self) -> list[str]:
        """Everything that fails a shipped workflow, one line each."""
        lines = [f"missing node type {n['type']!r} (node {n['id']})" for n in self.unknown_nodes]
        # Toasts and dialogs count from start-up on (a user sees them); start-up's console and page
        # errors do not: frontend 1.27.10 logs some on every fresh start, whatever the workflow.
        lines += [f"at start-up, {m['kind']} ({m['severity'] or 'dialog'}): {m['text']}" for m in self.startup["ui"]]
        lines += [line for m in self.ui for line in self._ui_problems(m)]
        # Off-machine lookups the sandbox blocks are not the workflow's fault (blocked_lookups lists them);
        # any other console error is, whatever URL it names.
        lines += [f"console error: {e['text']}" for e in self.console_errors
                  if not self._startup_404(e) and not self.blocked_lookup_url(e)]
        lines += [f"page error: {e}" for e in self.page_errors]
        lines += [f"native {d['type']}: {d['message']}" for d in self.native_dialogs]
        if self.prompt_error:
            lines.append(f"graphToPrompt failed: {self.prompt_error}")
        return lines


class FrontendBrowser:
    """One headless Chromium (one persistent profile) for the session; one fresh page per workflow."""

    def __init__(self, url: str, profile: Path, ready_timeout_s: float = 90.0, settle_ms: int = 700):
        config = {"url": url, "userDataDir": str(profile), "chromium": chromium_path(),
                  "readyTimeoutMs": int(ready_timeout_s * 1000), "settleMs": settle_ms}
        profile.parent.mkdir(parents=True, exist_ok=True)
        self._log = (profile.parent / "driver.log").open("w")
        self._process = subprocess.Popen(["node", str(HERE / "driver.cjs"), json.dumps(config)], env=node_env(),
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True)
        self.version = self._answer()["browser"]

    def _answer(self) -> dict:
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"driver.cjs exited ({self._process.poll()}); see {self._log.name}")
        answer = json.loads(line)
        if not answer["ok"]:
            raise RuntimeError(f"driver.cjs: {answer['error']}")
        return answer["result"]

    def _call(self, command: dict):
        self._process.stdin.write(json.dumps(command) + "\n")
        self._process.stdin.flush()
        return self._answer()

    def load(self, name: str, *, workflow: dict | None = None, template: str | None = None,
             screenshot: Path | None = None, keep: bool = False) -> LoadReport:
        """Load `workflow` (a UI-format graph) or `template` ("<custom node folder>/<file stem>", fetched
        from the server as the template browser does) in a fresh page, or neither (the page as the app
        opens it); report what the frontend did. With `keep`, the page stays open for the page methods
        below (until the next load or close_page)."""
        if screenshot:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
        r = self._call({"cmd": "load", "name": name, "workflow": workflow, "template": template,
                        "screenshot": str(screenshot) if screenshot else None, "keep": keep})
        return LoadReport(name, r["startup"], r["ui"], r["unknownNodes"], r["consoleErrors"], r["pageErrors"],
                          r["screenshotErrors"], r["nativeDialogs"], r["failedRequests"], r["prompt"], r["workflow"], r["promptError"],
                          screenshot, r["times"])

    # The page a `load(..., keep=True)` left open, used as a user would.
    def queue(self, prompt: dict, workflow: dict | None) -> dict:
        """POST /prompt from the page (its client id, so it receives the run's messages, as after Run).
        {"response": {"prompt_id", "node_errors"...}} or {"error", "response"} when the server refused it."""
        return self._call({"cmd": "queue", "prompt": prompt, "workflow": workflow})

    def run(self) -> dict:
        """What the Run button does (the app queues the graph it shows): {"queued", "ui": toasts/dialogs}."""
        return self._call({"cmd": "run"})

    def wait(self, prompt_id: str, timeout: float = 600.0) -> list[dict]:
        """The execution messages the page received for `prompt_id`, once it succeeded, failed or was cancelled."""
        return self._call({"cmd": "wait", "promptId": prompt_id, "timeoutMs": int(timeout * 1000)})

    def widgets(self, node_ids: list[int] | None = None) -> dict[str, dict]:
        """{node id (str): {"title", "type", "widgets": {name: value}, "options": {combo name: [choices]}}}
        as the frontend holds them now (every node of the graph without `node_ids`)."""
        return self._call({"cmd": "widgets", "nodeIds": node_ids})

    def set_widgets(self, values: dict[int, dict[str, object]]) -> None:
        """Set widget values ({node id: {widget name: value}}), as typing into them does."""
        self._call({"cmd": "set_widgets", "values": {str(k): v for k, v in values.items()}})

    def frame(self, path: Path, node_ids: list[int], pad: int = 20, viewport: tuple[int, int] | None = None,
              focus: bool = False) -> dict:
        """Screenshot the page with the canvas zoomed so the nodes fill it; `focus` hides the menus first
        (the frontend's focus mode), `viewport` resizes the page (it stays so for this page)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        return self._call({"cmd": "frame", "path": str(path), "nodeIds": node_ids, "pad": pad,
                           "viewport": list(viewport) if viewport else None, "focus": focus})

    def command(self, command_id: str) -> None:
        """Run a frontend command (e.g. "Comfy.BrowseTemplates", "Workspace.ToggleFocusMode")."""
        self._call({"cmd": "command", "id": command_id})

    def click(self, text: str, exact: bool = False) -> None:
        """Click the first visible element that shows `text`, as a user would."""
        self._call({"cmd": "click", "text": text, "exact": exact})

    def key(self, key: str) -> None:
        """Press a key on the page (Playwright's key names)."""
        self._call({"cmd": "key", "key": key})

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._call({"cmd": "screenshot", "path": str(path)})

    def close_page(self) -> None:
        self._call({"cmd": "close"})

    def close(self) -> None:
        """Quit the driver (it closes Chromium); kill only it if it does not answer."""
        if self._process.poll() is None:
            try:
                self._process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self._process.stdin.close()
                self._process.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        self._log.close()
