"""SlurmScheduler: the Scheduler protocol over a SlurmTransport (CLI or slurmrestd).

Before sbatch it checks the request against the live cluster (partition exists, walltime within the partition's
maximum, GPUs/CPUs per node within the largest node, QoS known) so users get a message that names the limit;
what only Slurm can judge is translated from Slurm's refusal. Status is one live query per cycle plus one
accounting query for jobs slurmctld no longer holds.
"""

from __future__ import annotations

import os
import pwd
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

from haihe import names
from haihe.errors import Conflict, InvalidInput, NotFound, SchedulerUnavailable
from haihe.schedulers.base import BaseScheduler, ClusterInfo, Feature, JobState, JobStatus, Launch, LogChunk
from haihe.schedulers.slurm import records
from haihe.schedulers.slurm.accounts import SlurmAccounts
from haihe.schedulers.slurm.cli import operator_name
from haihe.schedulers.slurm.options import job_dir, slurm_options
from haihe.schedulers.slurm.sbatch import LauncherConfig, render_script
from haihe.schedulers.slurm.transport import SlurmTransport

LOG_CHUNK = 1 << 20
# printed by the model server of a serving job (haihe.jobs.serving) once it listens; jobs sits above schedulers,
# so the marker is spelled here too (a unit test keeps the two equal)
ADDRESS_SCAN_LIMIT = 4 << 20  # a serving job reports its address early; never scan a huge log to its end
Probe = Callable[[], bool]


CTLD_FRESH_S = 0.5
"""How long a successful slurmctld probe stands for later calls."""


def ctld_probe_from_conf(conf: str | Path) -> Probe:
    """A TCP connect to slurmctld: refused means down *now*, instead of after Slurm's own 9 s of retries."""
    host, port = "127.0.0.1", 6817
    for line in Path(conf).read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "SlurmctldPort":
            port = int(value.split("-")[0])
        elif key.strip() == "SlurmctldHost" and "(" in value:
            host = value.split("(", 1)[1].rstrip(")").strip()
        elif key.strip() == "SlurmctldHost":
            host = value.strip()

    def probe() -> bool:
        try:
            with socket.create_connection((host, port), timeout=2):
                return True
        except OSError:
            return False

    return probe


class SlurmScheduler(BaseScheduler):
    UNSUPPORTED: ClassVar[Mapping[Feature, str]] = {
        Feature.LAUNCHER_RAY_TRAIN: "Ray Train needs a Ray cluster; use the torchrun launcher on Slurm",
    }
    RUNS_AS_USER: ClassVar[bool] = True

    def __init__(self, url: str, transport: SlurmTransport, *, jobs_dir: str, job_env: Mapping[str, str],
                 launchers: LauncherConfig | None = None, qos: Sequence[str] | None = None,
                 ctld_probe: Probe | None = None, describe_ttl: float = 30.0,
                 accounts: SlurmAccounts | None = None, operator: str | None = None) -> None:
        super().__init__(url)
        # with accounting: jobs carry --account and the account/user associations are made on first use (cached)
        self.accounts = accounts
        self.operator = operator or operator_name()
        self._known_accounts: set[str] = set()
        self._associations: set[tuple[str, str]] = set()
        self._user_dirs: set[str] = set()
        self._log_dirs: dict[str, Path] = {}  # job id → the directory its logs go to (per-user directories)
        self.transport = transport
        self.jobs_dir = jobs_dir
        self.job_env = dict(job_env)
        self.launchers = launchers or LauncherConfig()
        # QoS need slurmdbd; without it the names come from the cluster description and are checked here only
        self.platform_qos = tuple(qos) if qos is not None else None
        self.ctld_probe = ctld_probe
        self._ctld_ok_at = -CTLD_FRESH_S
        self.describe_ttl = describe_ttl
        self._info: tuple[float, ClusterInfo] | None = None
        # per serving job: (log bytes already scanned, last address seen), so each probe reads only new lines
        self._address_scan: dict[str, tuple[int, str | None]] = {}

    # -- helpers -----------------------------------------------------------------------------------------------
    def _require_ctld(self) -> None:
        # a probe that answered within CTLD_FRESH_S stands: a busy API submits tens of jobs a second, and each probe
        # is a connection slurmctld must accept (and log as a broken one)
        now = time.monotonic()
        if self.ctld_probe is None or now - self._ctld_ok_at < CTLD_FRESH_S:
            return
        if not self.ctld_probe():
            raise SchedulerUnavailable(f"{self.url}: slurmctld is not reachable")
        self._ctld_ok_at = now

    def _cached_info(self) -> ClusterInfo:
        """The cluster's shape for admission (partitions, nodes, QoS), read again after ``describe_ttl``; not the
        queue, whose listing grows with the jobs and is no part of what a job may ask for."""
        now = time.monotonic()
        if self._info is None or now - self._info[0] > self.describe_ttl:
            self._info = (now, self._describe(queue=False))
        return self._info[1]

    def admit(self, launch: Launch) -> None:
        """Refuse impossible requests with a message that names the limit."""
        info = self._cached_info()
        r = launch.resources
        names = [p.name for p in info.partitions]
        part = next((p for p in info.partitions if p.name == launch.partition), None) if launch.partition else \
            next((p for p in info.partitions if p.default), None)
        if launch.partition and part is None:
            raise InvalidInput(f"unknown partition {launch.partition!r}; partitions: {', '.join(names)}",
                               field="partition")
        if launch.qos and launch.qos not in info.qos:
            raise InvalidInput(f"unknown QoS {launch.qos!r}; QoS: {', '.join(info.qos) or 'none'}", field="qos")
        if part is None:
            return
        if part.max_time_min is not None and r.time_limit_min > part.max_time_min:
            raise InvalidInput(
                f"time_limit_min {r.time_limit_min} exceeds the maximum walltime of partition {part.name!r} "
                f"({part.max_time_min} min)", field="resources.time_limit_min")
        if r.nodes > part.nodes:
            raise InvalidInput(f"nodes {r.nodes} exceeds the {part.nodes} nodes of partition {part.name!r}",
                               field="resources.nodes")
        members = [n for n in info.nodes if part.name in n.partitions]
        max_gpus = max((n.gpus_total for n in members), default=0)
        if r.gpus_per_node > max_gpus:
            raise InvalidInput(
                f"gpus_per_node {r.gpus_per_node} exceeds the largest node of partition {part.name!r} "
                f"({max_gpus} GPUs per node)", field="resources.gpus_per_node")
        max_cpus = max((n.cpus_total for n in members), default=0)
        want = r.tasks_per_node * r.cpus_per_task
        if want > max_cpus:
            raise InvalidInput(
                f"tasks_per_node x cpus_per_task = {want} exceeds the largest node of partition {part.name!r} "
                f"({max_cpus} CPUs per node)", field="resources.cpus_per_task")

    # -- hooks -------------------------------------------------------------------------------------------------
    def _submit(self, launch: Launch) -> str:
        opts = slurm_options(launch, jobs_dir=self.jobs_dir, pass_qos=self.platform_qos is None,
                             pass_account=self.accounts is not None, batch_signal=self.launchers.batch_signal)
        if launch.user is not None:
            # HOME: the job's private directory (the account's own home may not exist on the nodes)
            launch = replace(launch, env={"HOME": opts["chdir"], **launch.env})
        script = render_script(launch, opts, self.launchers)
        self._require_ctld()
        self.admit(launch)
        if launch.user is not None:
            self._ensure_user_dir(launch.user)
        if "account" in opts:
            self._ensure_association(opts["account"], launch.user or self.operator)
        ref = self.transport.submit(script, opts, self.job_env, launch.user)
        if launch.user is not None:
            if len(self._log_dirs) > 100_000:
                self._log_dirs.clear()
            self._log_dirs[ref] = Path(opts["chdir"])
        return ref

    def _ensure_user_dir(self, user: str) -> None:
        """``<jobs>/<user>``: owned by the user, readable by the platform's group, closed to other job accounts."""
        if user in self._user_dirs:
            return
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise InvalidInput(f"no Unix account {user!r} on the submit host", field="user") from None
        path = Path(job_dir(self.jobs_dir, user))
        path.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            os.chown(path, pw.pw_uid, os.getegid())
            # setgid: the logs Slurm writes there keep the platform's group; others (job accounts) get nothing
            os.chmod(path, 0o2750)  # noqa: S103
        self._user_dirs.add(user)

    def _ensure_association(self, account: str, user: str) -> None:
        """The org account, the project sub-account and the user's association, each made once per process."""
        if self.accounts is None or (account, user) in self._associations:
            return
        parent = account.rsplit(".", 1)[0] if "." in account else None
        for name, up in ((parent, None), (account, parent)):
            if name and name not in self._known_accounts:
                self.accounts.ensure_account(name, up)
                self._known_accounts.add(name)
        self.accounts.ensure_user(user, [account])
        self._associations.add((account, user))

    def _status(self, refs: list[str]) -> dict[str, JobStatus]:
        self._require_ctld()
        by_ref: dict[str, list[records.SlurmJob]] = {}  # plain job id or array id → its records
        by_task: dict[str, records.SlurmJob] = {}  # "<array id>_<task>" → that task's record
        wanted = {r.split("_")[0] for r in refs}
        live = [t for j in self.transport.jobs() for t in records.jobs_from_squeue(j, wanted)]
        positions = records.queue_positions(live)
        _index(live, by_ref, by_task)
        missing = [r for r in refs if not _known(r, by_ref, by_task)]
        if missing:
            # ask accounting per job/array id, not per task: one short -j list, and tasks slurmctld purged come too
            ids = list(dict.fromkeys(r.split("_")[0] for r in missing))
            _index((records.from_sacct(x) for x in self.transport.accounting(ids) or []), by_ref, by_task)
        out: dict[str, JobStatus] = {}
        for ref in refs:
            base, _, task = ref.partition("_")
            if task:
                one = by_task.get(ref)
                tasks = [one] if one is not None else []
            else:
                tasks = by_ref.get(base, [])
            if tasks:
                out[ref] = records.fold(ref, _dedup(tasks), positions.get(base))
        return out

    def _find(self, tags: list[str]) -> dict[str, str]:
        self._require_ctld()
        wanted = set(tags)
        found: dict[str, str] = {}
        for j in map(records.from_squeue, self.transport.jobs()):
            if j.tag in wanted:
                found.setdefault(j.tag, j.ref)
        if wanted - set(found):
            for j in map(records.from_sacct, self.transport.recent_accounting(30) or []):
                if j.tag in wanted:
                    found.setdefault(j.tag, j.ref)
        return found

    def _cancel(self, ref: str) -> None:
        self._require_ctld()
        try:
            self.transport.cancel(ref)
        except Conflict:
            pass  # already finished: cancel is idempotent
        except NotFound:
            raise NotFound(f"no Slurm job {ref}", field="ref") from None

    def _job_log_dir(self, base: str) -> Path:
        """Where job ``base`` logs: remembered at submit, else found under the jobs dir or a per-user dir."""
        known = self._log_dirs.get(base)
        if known is not None:
            return known
        jobs = Path(self.jobs_dir)
        if any((jobs / f"{base}{suffix}.out").exists() for suffix in ("", "_0")):
            return jobs
        for suffix in ("", "_0"):
            for hit in jobs.glob(f"*/{base}{suffix}.out"):
                self._log_dirs[base] = hit.parent
                return hit.parent
        return jobs

    def _log_path(self, ref: str) -> Path:
        base, _, task = ref.partition("_")
        jobs = self._job_log_dir(base)
        if task:
            return jobs / f"{base}_{task}.out"
        plain = jobs / f"{base}.out"
        # an array's own ref reads its first task's log
        return plain if plain.exists() or not (jobs / f"{base}_0.out").exists() else jobs / f"{base}_0.out"

    def _logs(self, ref: str, offset: int) -> LogChunk:
        if not ref.replace("_", "").isdigit():
            raise InvalidInput(f"not a Slurm job ref: {ref!r}", field="ref")
        path = self._log_path(ref)
        data = b""
        size = 0
        if path.exists():
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(LOG_CHUNK)
                size = f.seek(0, 2)
        text, used = _decode_prefix(data)
        new_offset = offset + used
        complete = False
        if new_offset >= size:
            try:
                st = self._status([ref]).get(ref)
            except SchedulerUnavailable:
                st = None
            complete = st is not None and st.state.is_terminal() and (not path.exists()
                                                                       or new_offset >= path.stat().st_size)
        return LogChunk(data=text, offset=new_offset, complete=complete)

    def _endpoint(self, ref: str) -> str | None:
        """The address a serving job last printed to its log (``HAIHE_SERVING_ADDRESS=…``), read by offset.

        Only the file is read (no Slurm call): the caller already knows the job runs. A partly written last
        line waits for the next call. A log that shrank (the job was requeued and its log truncated) is
        scanned again from the start.
        """
        if not ref.isdigit():
            raise InvalidInput(f"not a Slurm serving job ref: {ref!r}", field="ref")
        path = self._log_path(ref)
        offset, address = self._address_scan.get(ref, (0, None))
        try:
            with open(path, "rb") as f:
                size = f.seek(0, 2)
                if size < offset:
                    offset, address = 0, None
                f.seek(offset)
                data = f.read(max(0, min(size, ADDRESS_SCAN_LIMIT) - offset))
        except FileNotFoundError:
            return None
        whole = data[: data.rfind(b"\n") + 1]
        address = names.serving_address(whole.decode(errors="replace")) or address
        if len(self._address_scan) > 4096:  # a platform serves few endpoints; forget the oldest scans
            self._address_scan.pop(next(iter(self._address_scan)))
        self._address_scan[ref] = (offset + len(whole), address)
        return address

    def _describe(self, queue: bool = True) -> ClusterInfo:
        self._require_ctld()
        nodes = tuple(records.parse_node(n) for n in self.transport.nodes())
        parts = tuple(records.parse_partition(p, nodes) for p in self.transport.partitions())
        jobs = [records.from_squeue(j) for j in self.transport.jobs()] if queue else []
        waiting = len({j.ref for j in jobs if j.state in (JobState.QUEUED, JobState.PENDING)})
        running = len({j.ref for j in jobs if j.state == JobState.RUNNING})
        qos = self.platform_qos if self.platform_qos is not None else tuple(self.transport.qos_names() or ())
        return ClusterInfo(scheduler=self.url, partitions=parts, nodes=nodes, queue_length=waiting, qos=tuple(qos),
                           running=running)


def _index(jobs: Iterable[records.SlurmJob], by_ref: dict[str, list[records.SlurmJob]],
           by_task: dict[str, records.SlurmJob]) -> None:
    """Index records by ref and by array task; what slurmctld said first (live) wins over accounting."""
    for j in jobs:
        by_ref.setdefault(j.ref, []).append(j)
        if j.job_id != j.ref:
            by_ref.setdefault(j.job_id, []).append(j)  # a started task's own job id resolves too
        if j.task is not None:
            by_task.setdefault(f"{j.ref}_{j.task}", j)


def _known(ref: str, by_ref: Mapping[str, list[records.SlurmJob]], by_task: Mapping[str, records.SlurmJob]) -> bool:
    return ref in by_task if "_" in ref else ref in by_ref


def _dedup(tasks: list[records.SlurmJob]) -> list[records.SlurmJob]:
    # tasks of a pending array share the array's job id until they start: key on the task too
    return list({(t.job_id, t.task): t for t in tasks}.values())


def _decode_prefix(data: bytes) -> tuple[str, int]:
    """Decode as much as is whole UTF-8; a multi-byte character cut by the chunk end waits for the next read."""
    for cut in range(0, 4):
        try:
            return data[: len(data) - cut].decode(), len(data) - cut
        except UnicodeDecodeError:
            continue
    return data.decode(errors="replace"), len(data)
