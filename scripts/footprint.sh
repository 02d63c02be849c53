#!/usr/bin/env bash
# Footprint of `adaptived` serving the demo bundle: a table, not a timed test.
#
#   scripts/footprint.sh [TARGET...]   (default: x86_64-unknown-linux-gnu aarch64-unknown-linux-musl)
#
# Per target: the stripped binary size; the time from process start to
# /v2/health/ready (first start: bundle dropped, verified, installed; then
# restarts from state, median of 3); RSS idle and its peak under 4 clients
# sending batch-1 infer requests (goal: at most 2x the bundle + 20 MB);
# idle CPU (the daemon's own probes included); the same with
# memory_budget_mb: 1 (the minimum). Non-x86 targets run under qemu-user and
# are labelled EMULATED: their RSS includes qemu's own memory and translated
# code, and their times are not board times.
# Env: PROFILE (default board), CARGO_TARGET_DIR (default
# /var/cache/adaptivenet/target-cross), IDLE_S (10), LOAD_S (10), SKIP_BUILD=1,
# QEMU_CPU (default cortex-a72 for aarch64, cortex-a7 for armv7), HOST_BIN
# (use this x86_64 binary instead of building $PROFILE; the column names its
# profile folder).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE="${PROFILE:-board}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/adaptivenet/target-cross}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(x86_64-unknown-linux-gnu aarch64-unknown-linux-musl)
for t in "${targets[@]}"; do
  [ "${SKIP_BUILD:-0}" != 1 ] || break
  if [ "$t" = x86_64-unknown-linux-gnu ]; then
    [ -z "${HOST_BIN:-}" ] || continue
    nice -n 10 cargo build --locked --profile "$PROFILE" -p adaptivenet-daemon --bin adaptived
  else
    nice -n 10 cargo build --locked --profile "$PROFILE" --target "$t" -p adaptivenet-daemon --bin adaptived
  fi
done
exec python3 - "$PROFILE" "$CARGO_TARGET_DIR" "${IDLE_S:-10}" "${LOAD_S:-10}" "${targets[@]}" <<'PY'
import gzip, json, os, shutil, signal, socket, statistics, struct, subprocess, sys, tempfile, threading, time, urllib.request

profile, tdir, idle_s, load_s = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
targets = sys.argv[5:]
repo = os.getcwd()
bundle = os.path.join(repo, "demo/fmnist-resnet.bundle")
bundle_mb = os.path.getsize(bundle) / 2**20
RUNNERS = {
    "x86_64-unknown-linux-gnu": [],
    "aarch64-unknown-linux-musl": ["qemu-aarch64"],
    "aarch64-unknown-linux-gnu": ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"],
    "armv7-unknown-linux-musleabihf": ["qemu-arm"],
    "armv7-unknown-linux-gnueabihf": ["qemu-arm"],
}
TICK = os.sysconf("SC_CLK_TCK")
def env_for(t):
    cpu = os.environ.get("QEMU_CPU") or {"aarch64": "cortex-a72", "armv7": "cortex-a7"}.get(t.split("-")[0])
    return dict(os.environ, **({"QEMU_CPU": cpu} if cpu else {}))

HOST_BIN = os.environ.get("HOST_BIN")

def binary(t):
    if t.startswith("x86_64"):
        return HOST_BIN or os.path.join(tdir, profile, "adaptived")
    return os.path.join(tdir, t, profile, "adaptived")

def profile_of(t):
    return os.path.basename(os.path.dirname(binary(t)))

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def status(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # MB
    return float("nan")

def cpu_s(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK

img = gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").read()
REQ = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "UINT8",
                              "data": list(img[16:16 + 784])}]}).encode()

class Daemon:
    def __init__(self, t, work, mem_mb=None):
        self.t, self.work, self.port = t, work, free_port()
        os.makedirs(f"{work}/bundles", exist_ok=True); os.makedirs(f"{work}/state", exist_ok=True)
        cfg = (f"bundle_dir: {work}/bundles\nstate_dir: {work}/state\nlisten: 127.0.0.1:{self.port}\n"
               f"trusted_keys: [{repo}/tests/fixtures/keys/demo.pub]\nworker_threads: 2\n")
        if mem_mb is not None:
            cfg += f"memory_budget_mb: {mem_mb}\n"
        open(f"{work}/config.yaml", "w").write(cfg)
        self.proc = None

    def start(self, drop):
        t0 = time.monotonic()
        self.proc = subprocess.Popen(RUNNERS[self.t] + [binary(self.t), "serve", "--config", f"{self.work}/config.yaml"],
                                     stdout=open(f"{self.work}/log", "a"), stderr=subprocess.STDOUT, env=env_for(self.t))
        if drop:
            shutil.copy(bundle, f"{self.work}/bundles/demo.bundle.part")
            os.rename(f"{self.work}/bundles/demo.bundle.part", f"{self.work}/bundles/demo.bundle")
        deadline = t0 + 600
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/health/ready", timeout=5).status == 200:
                    return time.monotonic() - t0
            except Exception:
                pass
            if self.proc.poll() is not None:
                sys.exit(f"footprint: {self.t} exited before ready; see {self.work}/log")
            if time.monotonic() > deadline:
                sys.exit(f"footprint: {self.t} not ready after 600 s")
            time.sleep(0.05)

    def kill(self):
        self.proc.kill(); self.proc.wait()

    def infer(self):
        r = urllib.request.Request(f"http://127.0.0.1:{self.port}/v2/models/fmnist-resnet/infer", data=REQ,
                                   headers={"Content-Type": "application/json"})
        return urllib.request.urlopen(r, timeout=120).read()

    def idle(self):
        pid = self.proc.pid
        time.sleep(3)
        c0, t0 = cpu_s(pid), time.monotonic()
        time.sleep(idle_s)
        return status(pid, "VmRSS"), 100 * (cpu_s(pid) - c0) / (time.monotonic() - t0)

    def load(self, clients=4):
        pid, stop, lat, peak, errors = self.proc.pid, time.monotonic() + load_s, [], 0.0, [0]
        def client():
            while time.monotonic() < stop:
                t = time.monotonic()
                try:
                    self.infer(); lat.append(time.monotonic() - t)
                except Exception:
                    errors[0] += 1
        th = [threading.Thread(target=client) for _ in range(clients)]
        for x in th: x.start()
        while any(x.is_alive() for x in th):
            peak = max(peak, status(pid, "VmRSS")); time.sleep(0.05)
        for x in th: x.join()
        return peak, len(lat) / load_s, statistics.median(lat) * 1e3 if lat else float("nan"), errors[0]

rows = {}
for t in targets:
    emu = bool(RUNNERS[t])
    r = rows[t] = {"label": t + (f" (qemu -cpu {env_for(t)['QEMU_CPU']}, EMULATED)" if emu else "")
                   + (f", profile `{profile_of(t)}`" if profile_of(t) != profile else "")}
    strip = {"aarch64": "aarch64-linux-gnu-strip", "armv7": "arm-linux-gnueabihf-strip"}.get(t.split("-")[0], "strip")
    subprocess.run([strip, "-o", "/tmp/footprint-stripped", binary(t)], check=True)
    r["size"] = os.path.getsize("/tmp/footprint-stripped") / 2**20
    r["static"] = "static" in subprocess.run(["file", "-b", "/tmp/footprint-stripped"], capture_output=True, text=True).stdout
    os.remove("/tmp/footprint-stripped")
    work = tempfile.mkdtemp(prefix="footprint-")
    try:
        d = Daemon(t, work)
        r["first"] = d.start(drop=True)
        d.kill()
        starts = []
        for _ in range(3):
            starts.append(d.start(drop=False)); d.kill()
        r["start"] = statistics.median(starts)
        d.start(drop=False)
        d.infer()
        r["idle_rss"], r["idle_cpu"] = d.idle()
        r["load_rss"], r["rps"], r["p50"], r["err"] = d.load()
        d.kill()
        m = Daemon(t, work + "/min", mem_mb=1)
        shutil.copytree(f"{work}/state", f"{work}/min/state", dirs_exist_ok=True)
        m.start(drop=False); m.infer()
        r["min_idle_rss"], _ = m.idle()
        r["min_load_rss"], *_ = m.load()
        m.kill()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"footprint: {t} done", file=sys.stderr)

goal = 2 * bundle_mb + 20
print(f"\nadaptived footprint, profile `{profile}`, demo bundle {bundle_mb:.2f} MB, {time.strftime('%Y-%m-%d', time.gmtime())}, "
      f"{os.cpu_count()} CPUs (shared), worker_threads 2, idle window {idle_s:.0f} s, load {load_s:.0f} s x 4 clients, batch 1\n")
cols = [rows[t] for t in targets]
def line(name, vals, goal=""):
    print("| " + " | ".join([name] + vals + [goal]) + " |")
line("measure", [c["label"] for c in cols], "goal")
print("|" + "---|" * (len(cols) + 2))
line("stripped binary, MB", [f"{c['size']:.2f}" + (" static" if c["static"] else " dynamic") for c in cols], "<= 15 (aarch64)")
line("first start to ready (verify + install), s", [f"{c['first']:.2f}" for c in cols])
line("restart to ready (from state), median of 3, s", [f"{c['start']:.2f}" for c in cols], "< 2 (x86)")
line("RSS idle, MB", [f"{c['idle_rss']:.1f}" for c in cols], f"<= {goal:.1f}")
line("RSS peak, 4 clients, MB", [f"{c['load_rss']:.1f}" for c in cols], f"<= {goal:.1f}")
line("requests/s, 4 clients (p50 ms)", [f"{c['rps']:.0f} ({c['p50']:.2f})" + (f", {c['err']} errors" if c['err'] else "") for c in cols])
line("idle CPU, % of one core", [f"{c['idle_cpu']:.2f}" for c in cols])
line("memory_budget_mb 1: RSS idle / peak 4 clients, MB", [f"{c['min_idle_rss']:.1f} / {c['min_load_rss']:.1f}" for c in cols], f"<= {goal:.1f}")
PY
