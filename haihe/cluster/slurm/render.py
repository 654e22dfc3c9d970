"""Pure renderers: a cluster description + a layout (paths, ports, host) → slurm.conf, gres.conf, slurmdbd.conf,
my.cnf. No I/O here, so golden-file tests lock the output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from haihe.cluster.ports import PortPlan
from haihe.cluster.slurm.description import ClusterDescription

# offsets inside PortPlan.slurm(0..99)
CTLD_PORT, SLURMD_PORT, DBD_PORT, DB_PORT, REST_PORT = 0, 1, 2, 3, 4
NODE_PORT0 = 10  # node i (1-based, in description order) listens on slurm(NODE_PORT0 + i)
MAX_NODES = 39
SRUN_PORTS = (50, 99)


@dataclass(frozen=True)
class Layout:
    """Where one local cluster lives: its state directory, host name and ports (all derived, never guessed)."""

    state_dir: Path
    host: str  # must equal `hostname -s`: slurmctld refuses to start otherwise
    plan: PortPlan
    cluster_name: str

    @classmethod
    def create(cls, state_dir: Path, host: str, plan: PortPlan, prefix: str) -> Layout:
        return cls(Path(state_dir).resolve(), host, plan, f"{prefix}{plan.base}")

    def port(self, offset: int) -> int:
        return self.plan.slurm(offset)

    @property
    def etc(self) -> Path:
        return self.state_dir / "etc"

    @property
    def slurm_conf(self) -> Path:
        return self.etc / "slurm.conf"

    @property
    def jwt_key(self) -> Path:
        return self.etc / "jwt_hs256.key"

    @property
    def jobs_dir(self) -> Path:
        return self.state_dir / "jobs"

    @property
    def fakedev(self) -> Path:
        return self.state_dir / "fakedev"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port(REST_PORT)}"


def _hostlist(names: tuple[str, ...]) -> str:
    return ",".join(names)


def render_slurm_conf(desc: ClusterDescription, lay: Layout, *, accounting: bool) -> str:
    s = lay.state_dir
    lines = [
        "# Rendered by haihe.cluster.slurm from the cluster description; do not edit.",
        f"ClusterName={lay.cluster_name}",
        f"SlurmctldHost={lay.host}(127.0.0.1)",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"SlurmctldPort={lay.port(CTLD_PORT)}",
        f"SlurmdPort={lay.port(SLURMD_PORT)}",
        f"SrunPortRange={lay.port(SRUN_PORTS[0])}-{lay.port(SRUN_PORTS[1])}",
        "AuthType=auth/munge",
        "# a requeued job may start again only after its old credential expired (default 120 s)",
        "AuthInfo=cred_expire=30",
        "CredType=cred/munge",
        "AuthAltTypes=auth/jwt",
        f"AuthAltParameters=jwt_key={lay.jwt_key}",
        f"StateSaveLocation={s}/state",
        f"SlurmdSpoolDir={s}/spool/%n",
        "# srun --mpi=pmix puts its spmix_appdir_* under TmpFS; several slurmd on one host must not share it",
        f"TmpFS={s}/nodetmp/%n",
        f"SlurmctldPidFile={s}/run/slurmctld.pid.slurm",
        f"SlurmdPidFile={s}/run/slurmd-%n.pid.slurm",
        f"SlurmctldLogFile={s}/log/slurmctld.log",
        f"SlurmdLogFile={s}/log/slurmd-%n.log",
        "MailProg=/bin/true",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/linux",
        "JobAcctGatherFrequency=30",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        f"DefMemPerCPU={desc.def_mem_per_cpu_mb}",
        "# node definitions win over what slurmd detects: many 'nodes' share one host's cores",
        "SlurmdParameters=config_overrides",
        "ReturnToService=2",
        "MpiDefault=none",
        "GresTypes=gpu",
        "# keep finished jobs visible to squeue for an hour (sacct covers longer when accounting is on)",
        "MinJobAge=3600",
        "# every pending array task counts as one job; Slurm's default of 10000 refuses sbatch long before a",
        "# centre's queue is full, and finished jobs keep their slot for MinJobAge",
        f"MaxJobCount={desc.max_job_count}",
        "MessageTimeout=10",
        "KillWait=5",
        "PriorityType=priority/multifactor",
        "PriorityWeightPartition=1000",
        "PriorityWeightQOS=1000",
    ]
    if accounting:
        lines += [
            "AccountingStorageType=accounting_storage/slurmdbd",
            "AccountingStorageHost=localhost",
            f"AccountingStoragePort={lay.port(DBD_PORT)}",
            "AccountingStorageEnforce=associations,limits,qos,safe",
            "AccountingStorageTRES=gres/gpu",
            "# store --comment in slurmdbd too: the platform tag must survive slurmctld purging the job",
            "AccountingStoreFlags=job_comment",
            "# GrpTRESMins needs usage tracking from priority/multifactor",
            "PriorityDecayHalfLife=0",
            "PriorityUsageResetPeriod=NONE",
            "PriorityWeightFairshare=1000",
        ]
    else:
        lines.append("AccountingStorageType=accounting_storage/none")
    for i, (node, nt) in enumerate(desc.all_nodes(), start=1):
        if i > MAX_NODES:
            raise ValueError(f"at most {MAX_NODES} nodes fit in the port plan")
        gres = f" Gres=gpu:{nt.gpus}" if nt.gpus else ""
        lines.append(
            f"NodeName={node} NodeHostname={lay.host} NodeAddr=127.0.0.1 Port={lay.port(NODE_PORT0 + i)} "
            f"CPUs={nt.cpus} RealMemory={nt.memory_mb}{gres} Feature={nt.name} State=UNKNOWN"
        )
    for p in desc.partitions:
        lines.append(
            f"PartitionName={p.name} Nodes={_hostlist(desc.partition_nodes(p))} "
            f"Default={'YES' if p.default else 'NO'} MaxTime={p.max_time_min} "
            f"PriorityTier={p.priority_tier} State=UP"
        )
    return "\n".join(lines) + "\n"


def render_gres_conf(desc: ClusterDescription, lay: Layout) -> str:
    lines = ["# count-only GPUs (no File=) are dropped by slurmd 22.05, so each GPU is a dummy device file"]
    for node, nt in desc.all_nodes():
        if nt.gpus:
            lines.append(f"NodeName={node} Name=gpu File={lay.fakedev}/nvidia[0-{nt.gpus - 1}]")
    return "\n".join(lines) + "\n"


def max_gpus_per_node(desc: ClusterDescription) -> int:
    return max(nt.gpus for nt in desc.node_types)


DB_USER = "slurm"


def render_slurmdbd_conf(lay: Layout, db_password: str) -> str:
    s = lay.state_dir
    return "\n".join(
        [
            "AuthType=auth/munge",
            "AuthAltTypes=auth/jwt",
            f"AuthAltParameters=jwt_key={lay.jwt_key}",
            "DbdHost=localhost",
            "DbdAddr=127.0.0.1",
            f"DbdPort={lay.port(DBD_PORT)}",
            "SlurmUser=root",
            "DebugLevel=info",
            f"LogFile={s}/log/slurmdbd.log",
            f"PidFile={s}/run/slurmdbd.pid.slurm",
            "StorageType=accounting_storage/mysql",
            "StorageHost=127.0.0.1",
            f"StoragePort={lay.port(DB_PORT)}",
            f"StorageUser={DB_USER}",
            f"StoragePass={db_password}",
            "StorageLoc=slurm_acct_db",
        ]
    ) + "\n"


def render_my_cnf(lay: Layout) -> str:
    s = lay.state_dir
    return "\n".join(
        [
            "[mariadbd]",
            f"datadir={s}/mysql",
            f"socket={s}/mysqlrun/mysqld.sock",
            f"pid-file={s}/mysqlrun/mysqld.pid",
            f"log-error={s}/log/mysqld.err",
            f"port={lay.port(DB_PORT)}",
            "bind-address=127.0.0.1",
            "skip-name-resolve",
            "user=mysql",
            "innodb_buffer_pool_size=64M",
            "innodb_log_file_size=16M",
            "innodb_lock_wait_timeout=900",
            "[client]",
            f"socket={s}/mysqlrun/mysqld.sock",
        ]
    ) + "\n"
