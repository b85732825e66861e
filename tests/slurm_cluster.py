"""A real one-node Slurm (Debian's slurm-wlm + munge) started in a temporary folder, for the Slurm tests.

As in shared/notes/slurm-single-node.md: munged with its socket in the folder, slurmctld and slurmd as root with
configs under the folder, the node line from `slurmd -C`. Nothing is installed here: launch/setup.sh --test does that.
"""

import os
import shutil
import signal
import socket
import subprocess
import time

BINARIES = ("slurmctld", "slurmd", "sbatch", "scontrol", "munged", "mungekey")


def why_not():
    missing = [b for b in BINARIES if shutil.which(b) is None and not os.path.exists(f"/usr/sbin/{b}")]
    if missing:
        return f"Slurm/munge not installed ({', '.join(missing)}): run launch/setup.sh --test as root"
    if os.geteuid() != 0:
        return "the Slurm test cluster needs root (SlurmUser=root)"
    return None


def _run(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def start(root):
    """Start munged, slurmctld and slurmd under root/. Returns (env, stop)."""
    root = str(root)
    for d in ("munge", "spool", "state", "log"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, "munge"), 0o711)
    shutil.chown(os.path.join(root, "munge"), "munge", "munge")
    key, sock = os.path.join(root, "munge", "munge.key"), os.path.join(root, "munge", "munge.socket.2")
    _run("runuser", "-u", "munge", "--", "mungekey", "-c", "-f", "-k", key)
    os.chmod(key, 0o600)
    _run("runuser", "-u", "munge", "--", "/usr/sbin/munged", f"--socket={sock}", f"--key-file={key}",
         f"--pid-file={root}/munge/munged.pid", f"--log-file={root}/munge/munged.log", f"--seed-file={root}/munge/seed")
    node_line = _run("slurmd", "-C").stdout.splitlines()[0]
    host = socket.gethostname().split(".")[0]
    conf = os.path.join(root, "slurm.conf")
    with open(conf, "w") as f:
        f.write(f"""ClusterName=toolgen-test
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge=600
SlurmctldPort=16817
SlurmdPort=16818
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
{node_line}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": conf}
    subprocess.Popen(["slurmctld", "-D", "-c", "-f", conf], env=env, start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.Popen(["slurmd", "-D", "-f", conf], env=env, start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop():
        for pidfile in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            try:
                with open(os.path.join(root, pidfile)) as f:
                    os.kill(int(f.read().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                pass

    deadline = time.time() + 60
    while time.time() < deadline:
        state = subprocess.run(["sinfo", "-h", "-n", node_line.split()[0].split("=")[1], "-o", "%t"], env=env,
                               capture_output=True, text=True).stdout.strip()
        if state == "idle":
            return env, stop
        time.sleep(0.5)
    stop()
    raise RuntimeError(f"Slurm did not come up (node state {state!r}); logs in {root}/log")


def job_info(job_id, env):
    """scontrol show job as a dict (no accounting here, so no sacct)."""
    out = subprocess.run(["scontrol", "show", "job", str(job_id)], env=env, capture_output=True, text=True).stdout
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def wait_for(job_ids, env, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = [job_info(j, env).get("JobState") for j in job_ids]
        if all(s in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY") for s in states):
            return states
        time.sleep(1)
    raise TimeoutError(f"jobs {job_ids} still not finished: {states}")
