"""Consistency of the deployment files with each other and with the binary.

    python check.py HELP_TEXT_FILE

Run by tests/deploy/run (with its venv, for PyYAML) from the repository root, after the
schema validation. Checks that:
- every environment variable the Containerfile, the systemd unit, the Kubernetes manifests
  and docs/deploy.md name (RATEWARDEN_*, and each name they set) is one `ratewarden
  --help` documents (clap prints `[env: NAME=]`);
- the Kubernetes probes are GET /livez (liveness, startup) and GET /readyz (readiness) on
  the container's HTTP port, and the scrape annotations name that port and /metrics;
- the grace period covers the shutdown delay plus the graceful stop;
- the pod runs as the image's uid, non-root, read-only, without capabilities;
- the volume, Secret, Service and PodDisruptionBudget match the Deployment;
- the Containerfile and the unit set what the deployment story relies on.
Prints each check; exits 1 on the first failure.
"""

import glob
import re
import sys

import yaml

passed = 0


def check(what, ok):
    global passed
    if not ok:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    passed += 1
    print(f"ok: {what}")


help_text = open(sys.argv[1], encoding="utf-8").read()
documented = set(re.findall(r"\[env: ([A-Z0-9_]+)[=\]]", help_text))
check(f"--help documents {len(documented)} environment variables", len(documented) > 10)

# -- every variable named anywhere in the deployment files ------------------------------
files = (
    ["Containerfile", "deploy/systemd/ratewarden.service", "docs/deploy.md"]
    + sorted(glob.glob("deploy/kubernetes/*.yaml"))
    + sorted(glob.glob("deploy/kubernetes/examples/*.yaml"))
)
texts = {f: open(f, encoding="utf-8").read() for f in files}
for f, text in texts.items():
    named = set(re.findall(r"\bRATEWARDEN_[A-Z0-9_]+\b", text))
    # Names the file sets: Containerfile ENV, unit Environment=, env files' KEY=.
    named |= set(re.findall(r"^\s*ENV\s+([A-Z][A-Z0-9_]*)=", text, re.M))
    named |= set(re.findall(r"^\s+([A-Z][A-Z0-9_]*)=\S", text, re.M)) if f == "Containerfile" else set()
    named |= set(re.findall(r"^Environment=\"?([A-Z][A-Z0-9_]*)=", text, re.M))
    # Names the manifests set (env: - name: X), in comments too.
    named |= set(re.findall(r"-\s+name:\s+([A-Z][A-Z0-9_]+)\s*$", text, re.M))
    # Names written as NAME=value or `NAME` in prose and comments, when they look like one
    # of ratewarden's (a known prefix or a name --help lists).
    for n in re.findall(r"\b([A-Z][A-Z0-9]*_[A-Z0-9_]+)\b", text):
        if n in documented or n.startswith(("RATEWARDEN_", "REDIS_", "ADMIN_", "DECISION_", "DATABASE_")):
            named.add(n)
    # RATEWARDEN_BIN is the test scripts' own (the binary under test), not the server's.
    unknown = sorted(n for n in named if n not in documented and n not in ("RUST_LOG", "RATEWARDEN_BIN"))
    check(f"{f}: every variable it names is documented by --help ({len(named)})"
          + (f" (unknown: {', '.join(unknown)})" if unknown else ""), not unknown)

# -- Kubernetes ----------------------------------------------------------------------
docs = {}
for f in sorted(glob.glob("deploy/kubernetes/*.yaml")) + sorted(glob.glob("deploy/kubernetes/examples/*.yaml")):
    for d in yaml.safe_load_all(open(f, encoding="utf-8")):
        if d:
            docs[(d["kind"], d["metadata"]["name"])] = d
kinds = sorted(k for k, _ in docs)
check(f"manifests: {', '.join(kinds)}",
      all(k in kinds for k in ("Deployment", "Service", "PodDisruptionBudget", "PersistentVolumeClaim", "Secret")))

dep = next(d for (k, _), d in docs.items() if k == "Deployment")
pod = dep["spec"]["template"]["spec"]
(ctr,) = pod["containers"]
ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
env = {e["name"]: e for e in ctr["env"]}
check("Deployment: 1 replica, Recreate strategy (one writer of the SQLite file)",
      dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate")
check("container port http is 8000, as the image's RATEWARDEN_BIND",
      ports.get("http") == 8000 and env["RATEWARDEN_BIND"]["value"].endswith(":8000"))


def probe(name):
    p = ctr[name]["httpGet"]
    port = ports.get(p["port"], p["port"])
    return p["path"], port


check("livenessProbe: GET /livez on 8000", probe("livenessProbe") == ("/livez", 8000))
check("readinessProbe: GET /readyz on 8000", probe("readinessProbe") == ("/readyz", 8000))
check("startupProbe (if any): GET /livez or /readyz on 8000",
      "startupProbe" not in ctr or probe("startupProbe") in (("/livez", 8000), ("/readyz", 8000)))

ann = dep["spec"]["template"]["metadata"]["annotations"]
check("Prometheus annotations: scrape true, port 8000, path /metrics",
      ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == "8000"
      and ann.get("prometheus.io/path") == "/metrics")
check("the scrape comment says /metrics needs the admin token",
      re.search(r"/metrics is behind the\s+#\s+admin rule", texts["deploy/kubernetes/deployment.yaml"]) is not None
      or "Bearer" in texts["deploy/kubernetes/deployment.yaml"])

delay_ms = int(env["RATEWARDEN_SHUTDOWN_DELAY_MS"]["value"])
grace = pod["terminationGracePeriodSeconds"]
# The graceful stop waits up to 5 s for requests in flight; then the final write.
check(f"shutdown: delay {delay_ms} ms + graceful stop 5 s + final write fit in "
      f"terminationGracePeriodSeconds {grace}", delay_ms == 5000 and delay_ms / 1000 + 5 + 5 <= grace)

psc, csc = pod.get("securityContext", {}), ctr.get("securityContext", {})
check("pod runs as non-root uid 65532 (the image's USER)",
      psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 65532)
check("container: read-only root, no privilege escalation, drops ALL capabilities",
      csc.get("readOnlyRootFilesystem") is True and csc.get("allowPrivilegeEscalation") is False
      and csc.get("capabilities", {}).get("drop") == ["ALL"])

mounts = {m["mountPath"]: m["name"] for m in ctr["volumeMounts"]}
vols = {v["name"]: v for v in pod["volumes"]}
data = vols[mounts["/var/lib/ratewarden"]]
claim = data["persistentVolumeClaim"]["claimName"]
check(f"/var/lib/ratewarden is the PersistentVolumeClaim {claim}, which is defined",
      ("PersistentVolumeClaim", claim) in docs)
check("DATABASE_URL is on that volume",
      env["DATABASE_URL"]["value"] == "/var/lib/ratewarden/ratewarden.db")
ref = env["ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
secret = docs.get(("Secret", ref["name"]))
check(f"ADMIN_TOKEN comes from Secret {ref['name']}/{ref['key']}, as the example Secret defines",
      secret is not None and ref["key"] in secret.get("stringData", secret.get("data", {})))

labels = dep["spec"]["template"]["metadata"]["labels"]
svc = next(d for (k, _), d in docs.items() if k == "Service")
pdb = next(d for (k, _), d in docs.items() if k == "PodDisruptionBudget")


def selects(sel):
    return all(labels.get(k) == v for k, v in sel.items())


check("Deployment selector, Service selector and PDB selector match the pod's labels",
      selects(dep["spec"]["selector"]["matchLabels"]) and selects(svc["spec"]["selector"])
      and selects(pdb["spec"]["selector"]["matchLabels"]))
check("Service targets the container's http port",
      all(p["targetPort"] in ports or p["targetPort"] in ports.values() for p in svc["spec"]["ports"]))

# -- Containerfile and unit ----------------------------------------------------------
cf = texts["Containerfile"]
cf_code = "\n".join(l for l in cf.split("\n") if not l.lstrip().startswith("#"))
for line in ("ARG BASE=gcr.io/distroless/cc-debian12:nonroot", "ARG BINARY=target/release/ratewarden", "USER 65532:65532",
             "VOLUME /var/lib/ratewarden", "EXPOSE 8000 8081", "STOPSIGNAL SIGTERM",
             'ENTRYPOINT ["/usr/local/bin/ratewarden"]',
             "RATEWARDEN_BIND=0.0.0.0:8000", "DATABASE_URL=/var/lib/ratewarden/ratewarden.db"):
    check(f"Containerfile: {line}", re.search(r"(^|\s)" + re.escape(line), cf_code, re.M) is not None)
check("Containerfile: the state directory is copied owned by 65532",
      re.search(r"^COPY --chown=65532:65532 \S+ /var/lib/ratewarden/?$", cf_code, re.M) is not None)
ci = open(".containerignore", encoding="utf-8").read().split("\n")
copied = re.findall(r"^COPY (?:--\S+ )*(\S+) ", cf_code, re.M)
check(".containerignore lets in the binaries and what the Containerfile copies",
      "*" in ci and "!target/release/ratewarden" in ci and "!target/debug/ratewarden" in ci
      and all(c.startswith("$") or "!" + c.rstrip("/") in ci for c in copied))

check(".dockerignore (for Docker) has the same rules as .containerignore",
      open(".dockerignore", encoding="utf-8").read().split("\n") == ci)

unit = texts["deploy/systemd/ratewarden.service"]
for line in ("DynamicUser=yes", "StateDirectory=ratewarden",
             "Environment=DATABASE_URL=/var/lib/ratewarden/ratewarden.db", "ProtectSystem=strict",
             "ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes", "Restart=on-failure",
             "CapabilityBoundingSet=", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
             "SystemCallFilter=@system-service", "KillSignal=SIGTERM",
             "ExecReload=/bin/kill -HUP $MAINPID", "EnvironmentFile=-/etc/ratewarden/ratewarden.env",
             "ExecStart=/usr/local/bin/ratewarden"):
    check(f"unit: {line}", re.search("^" + re.escape(line) + "$", unit, re.M) is not None)
check("unit: TimeoutStopSec= is set", re.search(r"^TimeoutStopSec=\d+", unit, re.M) is not None)
check("--help says SIGHUP reloads the config file (what ExecReload relies on)", "SIGHUP" in help_text)

print(f"{passed} consistency checks passed")
