"""Stand-ins for docker, kind, kubectl and helm that let scripts/cluster-up run here.

No container engine or API server can run on these machines, so the tests run the real
cluster-up script (real bash) against these fakes. Each call is appended to the JSON-lines
log named by FAKE_LOG, and the fakes keep a little state (FAKE_STATE) to model the upstream
behaviours cluster-up must respect, each from the upstream source at the pinned tags (see
docs/cluster-assumptions.md):

- Knative validates its ConfigMaps with config.webhook.serving.knative.dev, failurePolicy
  Fail, served by deployment/webhook in knative-serving: a ConfigMap patch there fails until
  that Deployment has been waited Available after serving-core was applied.
- cert-manager's webhook answers only once cainjector has injected its CA, which can lag
  the Deployments becoming Available: the first FAKE_CA_LAG server-side dry runs of a
  cert-manager object after Available fail, and KServe's chart (which creates Certificates)
  fails to install until one has succeeded.
- KServe's own webhooks get their CA the same way: the first FAKE_CA_LAG dry runs of an
  InferenceService after the controller is Available fail.
- kubectl talks to an API server of version FAKE_SERVER_VERSION, and is itself
  FAKE_KUBECTL_VERSION.

Run as `fake_cluster_tools.py TOOL ARGS...`; tests write one wrapper script per tool.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

# Release manifests cluster-up applies, and the namespace whose Deployments they start.
INSTALLS = {
    "serving-core.yaml": "knative-serving",
    "cert-manager.yaml": "cert-manager",
    "kourier.yaml": "kourier-system",
}


def _state() -> dict[str, Any]:
    path = Path(os.environ["FAKE_STATE"])
    return json.loads(path.read_text()) if path.exists() else {}


def _save(state: dict[str, Any]) -> None:
    Path(os.environ["FAKE_STATE"]).write_text(json.dumps(state))


def _log(tool: str, args: list[str], rc: int, note: str = "") -> None:
    with open(os.environ["FAKE_LOG"], "a") as fh:
        fh.write(json.dumps({"tool": tool, "args": args, "rc": rc, "note": note}) + "\n")


def _opt(args: list[str], *names: str) -> str | None:
    for i, a in enumerate(args):
        for n in names:
            if a == n and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(n + "="):
                return a.split("=", 1)[1]
    return None


def _fail(tool: str, args: list[str], message: str) -> int:
    print(message, file=sys.stderr)
    _log(tool, args, 1, message)
    return 1


def kubectl(args: list[str], stdin: str) -> int:
    state = _state()
    ns = _opt(args, "-n", "--namespace") or "default"
    client = os.environ.get("FAKE_KUBECTL_VERSION", "v1.34.0")
    lag = int(os.environ.get("FAKE_CA_LAG", "0"))
    verb = next((a for a in args if not a.startswith("-") and a not in (ns,)), "")
    if verb == "version":
        print(f"Client Version: {client}\nKustomize Version: v5.7.1")
        if "--client" not in args:
            print(f"Server Version: {os.environ.get('FAKE_SERVER_VERSION', 'v1.34.0')}")
        _log("kubectl", args, 0)
        return 0
    if verb == "apply" and "--dry-run=server" in args:
        text = Path(_opt(args, "-f")).read_text()
        gate = "cert-manager" if "cert-manager.io" in text else "kserve"
        if not state.get(f"available:{gate}"):
            return _fail("kubectl", args, f"Internal error: failed calling webhook for {gate}: no endpoints")
        tries = state.get(f"probe:{gate}", 0) + 1
        state[f"probe:{gate}"] = tries
        _save(state)
        if tries <= lag:
            return _fail("kubectl", args, f"x509: certificate signed by unknown authority ({gate} CA not injected yet)")
        state[f"webhook-ok:{gate}"] = True
        _save(state)
        _log("kubectl", args, 0, f"dry run admitted by {gate}")
        return 0
    if verb == "apply":
        source = _opt(args, "-f") or _opt(args, "-k") or ""
        if source == "-":
            state.setdefault("applied_stdin", []).append(stdin)
        for marker, namespace in INSTALLS.items():
            if source.endswith(marker):
                # A fresh apply starts new pods: what was Available must be waited for again.
                state.pop(f"available:{namespace}", None)
        _save(state)
        _log("kubectl", args, 0)
        return 0
    if verb == "wait":
        cond = _opt(args, "--for") or ""
        if cond == "condition=Available":
            targets = [a for a in args if a.startswith("deployment")]
            names = {t.split("/", 1)[1] for t in targets if "/" in t}
            covers_all = "--all" in args
            if ns == "knative-serving" and (covers_all or "webhook" in names):
                state["available:knative-serving"] = True
            if ns == "cert-manager" and covers_all:
                state["available:cert-manager"] = True
            if ns == "kserve" and "kserve-controller-manager" in names:
                state["available:kserve"] = True
            if ns == "kourier-system":
                state["available:kourier-system"] = True
            _save(state)
        _log("kubectl", args, 0)
        return 0
    if verb == "patch":
        target = next((a for a in args if a.startswith("configmap/")), None)
        if target and ns == "knative-serving" and not state.get("available:knative-serving"):
            return _fail(
                "kubectl", args,
                'Internal error occurred: failed calling webhook "config.webhook.serving.knative.dev":'
                " no endpoints available for service \"webhook\"",
            )
        _log("kubectl", args, 0)
        return 0
    if verb == "get":
        jsonpath = _opt(args, "-o") or ""
        if "secret" in args:
            key = "accesskey" if "accesskey" in jsonpath else "secretkey"
            print(base64.b64encode(f"fake-{key}".encode()).decode(), end="")
        elif "configmap" in args:
            print('{"disableIstioVirtualHost": true}', end="")
        _log("kubectl", args, 0)
        return 0
    if verb == "create":
        name = args[args.index("generic") + 1] if "generic" in args else "x"
        print(f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {ns}\n")
        _log("kubectl", args, 0)
        return 0
    if verb == "annotate":
        annotations = [a for a in args if "=" in a and not a.startswith("-")]
        print(stdin.rstrip() + "\n  annotations:\n" + "".join(
            f"    {a.split('=', 1)[0]}: \"{a.split('=', 1)[1]}\"\n" for a in annotations))
        _log("kubectl", args, 0)
        return 0
    _log("kubectl", args, 0)
    return 0


def helm(args: list[str]) -> int:
    state = _state()
    if args[:2] == ["version", "--short"]:
        print("v4.1.4+gfake")
        _log("helm", args, 0)
        return 0
    if args[:3] == ["upgrade", "--install", "kserve"] and not state.get("webhook-ok:cert-manager"):
        return _fail(
            "helm", args,
            'Error: Internal error occurred: failed calling webhook "webhook.cert-manager.io":'
            " x509: certificate signed by unknown authority",
        )
    _log("helm", args, 0)
    return 0


def main() -> int:
    tool, args = sys.argv[1], sys.argv[2:]
    stdin = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    if tool == "kubectl":
        return kubectl(args, stdin)
    if tool == "helm":
        return helm(args)
    if tool in ("python", "python3"):
        return _fail(tool, args, f"{tool} must not be needed by cluster-up (a fresh runner may lack its packages)")
    if tool == "curl":
        # The tests never reach the network: a download is recorded and fails as offline.
        return _fail(tool, args, "curl: (6) Could not resolve host (offline test)")
    if tool == "kind" and args[:2] == ["get", "clusters"]:
        _log(tool, args, 0)
        return 0
    _log(tool, args, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
