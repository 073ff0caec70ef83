"""Host-tier harness: workflow files checked in the real ComfyUI frontend, then run on a CPU server.

- server.py: `main.py --cpu` in a temporary base directory, loading the pack and a test-only node;
- browser.py + driver.cjs: headless Debian Chromium via playwright-core; loads a workflow the way the
  template browser / drag-and-drop does and reports what the frontend showed and converted;
- prompt_run.py: swaps checkpoint loaders for tiny models, lowers widgets, queues, waits;
- test_only_node/: PrismTestTinyCheckpointLoader, loaded only by the test server.
Used by tests/host/test_workflows_frontend.py.
"""
