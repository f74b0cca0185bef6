"""Seccomp profiles: cripy's RuntimeDefault profile (as data), Localhost profile loading, and rendering of a
profile into the OCI `linux.seccomp` object for one container.

Profiles are written in the widely used Docker/Moby JSON form: `defaultAction`, `defaultErrnoRet`,
`architectures` or `archMap`, and `syscalls` entries with `names`, `action`, `errnoRet`, `args` and
optional `includes` / `excludes` conditions on capabilities (`caps`), architectures (`arches`, Go names
such as amd64) and kernel version (`minKernel`). Rendering keeps the entries whose conditions hold for
the container (its bounding capabilities, the host's architecture and kernel) and drops the condition keys,
which the OCI spec does not know. A profile already in OCI form passes through unchanged.

RuntimeDefault is an allow list: unlisted syscalls fail with EPERM. Namespace/mount/module/time/etc.
syscalls are allowed only when the container holds the capability that guards them, like the Docker default.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import stat
from typing import Any, Iterable

from cripy.errors import InvalidArgument

EPERM = 1
ENOSYS = 38

# clone(2) flags that create namespaces: without CAP_SYS_ADMIN clone may not use any of them.
_CLONE_NAMESPACE_FLAGS = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)

# Go architecture name -> libseccomp architectures the kernel may be asked to run (native + compat).
ARCH_MAP: dict[str, list[str]] = {
    "amd64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "arm64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
    "386": ["SCMP_ARCH_X86"],
    "arm": ["SCMP_ARCH_ARM"],
    "ppc64le": ["SCMP_ARCH_PPC64LE"],
    "s390x": ["SCMP_ARCH_S390X", "SCMP_ARCH_S390"],
    "riscv64": ["SCMP_ARCH_RISCV64"],
}
_MACHINE_TO_GOARCH = {
    "x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "i686": "386", "i386": "386",
    "armv7l": "arm", "armv8l": "arm", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
}

# Everyday syscalls of ordinary programs (libc, shells, servers, runc's last steps before execve).
_ALLOWED_SYSCALLS = sorted("""
accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown chown32
clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64
clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2 dup3
epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old
eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate
fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr
flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate
ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake futimesat getcpu getcwd
getdents getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer
get_mempolicy getpeername getpgid getpgrp getpid getppid getpriority getrandom getresgid getresgid32
getresuid getresuid32 getrlimit get_robust_list getrusage getsid getsockname getsockopt get_thread_area
gettid gettimeofday getuid getuid32 getxattr getxattrat inotify_add_watch inotify_init inotify_init1
inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64 ioprio_get
ioprio_set io_setup io_submit ipc kill landlock_add_rule landlock_create_ruleset landlock_restrict_self
lchown lchown32 lgetxattr link linkat listen listmount listxattr listxattrat llistxattr _llseek lremovexattr
lseek lsetxattr lstat lstat64 madvise map_shadow_stack membarrier memfd_create memfd_secret mincore mkdir
mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open
mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap mseal msgctl
msgget msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep newfstatat _newselect
open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll
ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64
pwrite64 pwritev pwritev2 read readahead readdir readlink readlinkat readv recv recvfrom recvmmsg
recvmmsg_time64 recvmsg remap_file_pages removexattr removexattrat rename renameat renameat2
restart_syscall riscv_flush_icache rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo
rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity
sched_getattr sched_getparam sched_get_priority_max sched_get_priority_min sched_getscheduler
sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam
sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop semtimedop_time64 send
sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32
setgroups setgroups32 setitimer setpgid setpriority setregid setregid32 setresgid setresgid32 setresuid
setresuid32 setreuid setreuid32 setrlimit set_robust_list setsid setsockopt set_thread_area
set_tid_address setuid setuid32 setxattr setxattrat shmat shmctl shmdt shmget shutdown sigaction
sigaltstack signal signalfd signalfd4 sigpending sigprocmask sigreturn sigsuspend socket socketcall
socketpair splice stat stat64 statfs statfs64 statmount statx symlink symlinkat sync sync_file_range
syncfs sysinfo tee tgkill time timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64
timer_settime timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime
timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat utime utimensat
utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
""".split())

# Syscalls that only make sense (and are only safe) with the capability that guards them in the kernel.
_CAPABILITY_SYSCALLS: dict[str, list[str]] = {
    "CAP_SYS_ADMIN": [
        "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick", "lookup_dcookie",
        "mount", "mount_setattr", "move_mount", "open_tree", "perf_event_open", "quotactl", "quotactl_fd",
        "setdomainname", "sethostname", "setns", "syslog", "umount", "umount2", "unshare",
    ],
    "CAP_SYS_BOOT": ["reboot"],
    "CAP_SYS_CHROOT": ["chroot"],
    "CAP_SYS_MODULE": ["delete_module", "init_module", "finit_module"],
    "CAP_SYS_PACCT": ["acct"],
    "CAP_SYS_PTRACE": ["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"],
    "CAP_SYS_RAWIO": ["iopl", "ioperm"],
    "CAP_SYS_TIME": ["settimeofday", "stime", "clock_settime", "clock_settime64"],
    "CAP_SYS_TTY_CONFIG": ["vhangup"],
    "CAP_SYS_NICE": ["mbind", "set_mempolicy", "set_mempolicy_home_node", "migrate_pages", "move_pages"],
    "CAP_SYSLOG": ["syslog"],
    "CAP_BPF": ["bpf"],
    "CAP_PERFMON": ["perf_event_open"],
    "CAP_DAC_READ_SEARCH": ["open_by_handle_at"],
}

_ARCH_SYSCALLS: dict[str, list[str]] = {
    "amd64": ["arch_prctl", "modify_ldt"],
    "386": ["modify_ldt"],
    "arm64": [],
    "arm": ["arm_fadvise64_64", "arm_sync_file_range", "breakpoint", "cacheflush", "set_tls", "sync_file_range2"],
}

# personality(2) values that do not weaken anything: PER_LINUX, PER_LINUX32 (+UNAME26 variants), and the query.
_SAFE_PERSONALITIES = [0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF]


def _allow(names: Iterable[str], **extra: Any) -> dict[str, Any]:
    return {"names": sorted(names), "action": "SCMP_ACT_ALLOW", **extra}


def _runtime_default_profile() -> dict[str, Any]:
    syscalls: list[dict[str, Any]] = [_allow(_ALLOWED_SYSCALLS)]
    syscalls += [
        _allow(["personality"], args=[{"index": 0, "value": v, "valueTwo": 0, "op": "SCMP_CMP_EQ"}])
        for v in _SAFE_PERSONALITIES
    ]
    syscalls += [_allow(names, includes={"arches": [arch]}) for arch, names in _ARCH_SYSCALLS.items() if names]
    syscalls += [_allow(names, includes={"caps": [cap]}) for cap, names in _CAPABILITY_SYSCALLS.items()]
    syscalls.append(
        _allow(
            ["clone"],
            args=[{"index": 0, "value": _CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
            excludes={"caps": ["CAP_SYS_ADMIN"]},
        )
    )
    # ENOSYS (not EPERM) makes libc fall back from clone3 to clone, whose flags the filter can inspect.
    syscalls.append(
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS, "excludes": {"caps": ["CAP_SYS_ADMIN"]}}
    )
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "archMap": [
            {"architecture": arches[0], "subArchitectures": arches[1:]} for arches in ARCH_MAP.values()
        ],
        "syscalls": syscalls,
    }


RUNTIME_DEFAULT_PROFILE: dict[str, Any] = _runtime_default_profile()


def default_profile() -> dict[str, Any]:
    """A fresh copy of cripy's RuntimeDefault profile (Docker form, conditions not yet applied)."""
    return copy.deepcopy(RUNTIME_DEFAULT_PROFILE)


PROFILE_MAX_BYTES = 1 << 20  # Docker's default profile is about 20 kB; a megabyte is room for any real one


def load_localhost_profile(path: str) -> dict[str, Any]:
    """Read a Localhost profile from the node; a missing, malformed, oversized or not regular file is the request's
    fault. Opened without blocking (a FIFO would hold the worker thread forever) and never read past the limit (a
    device such as /dev/zero never ends)."""
    if not os.path.isabs(path):
        raise InvalidArgument(f"seccomp localhost profile path {path!r} must be absolute")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise InvalidArgument(f"seccomp localhost profile {path} does not exist on the node") from None
    except OSError as exc:
        raise InvalidArgument(f"seccomp localhost profile {path} cannot be read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"seccomp localhost profile {path} is not a regular file")
        if st.st_size > PROFILE_MAX_BYTES:
            raise InvalidArgument(f"seccomp localhost profile {path} is larger than {PROFILE_MAX_BYTES} bytes "
                                  f"({st.st_size})")
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(PROFILE_MAX_BYTES + 1)
    except OSError as exc:
        raise InvalidArgument(f"seccomp localhost profile {path} cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > PROFILE_MAX_BYTES:
        raise InvalidArgument(f"seccomp localhost profile {path} is larger than {PROFILE_MAX_BYTES} bytes")
    try:
        profile = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"seccomp localhost profile {path} is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(profile, dict) or "defaultAction" not in profile:
        raise InvalidArgument(f"seccomp localhost profile {path} has no defaultAction")
    return profile


def host_goarch(machine: str | None = None) -> str:
    """Go name of the host architecture (amd64, arm64, ...)."""
    machine = machine or platform.machine()
    return _MACHINE_TO_GOARCH.get(machine, machine)


def render_profile(
    profile: dict[str, Any],
    capabilities: Iterable[str],
    *,
    goarch: str | None = None,
    kernel_release: str | None = None,
) -> dict[str, Any]:
    """The OCI linux.seccomp object of `profile` for a container holding `capabilities` (bounding set)."""
    goarch = goarch or host_goarch()
    kernel = _kernel_version(kernel_release or os.uname().release)
    caps = set(capabilities)
    result: dict[str, Any] = {"defaultAction": profile["defaultAction"]}
    if "defaultErrnoRet" in profile:
        result["defaultErrnoRet"] = profile["defaultErrnoRet"]
    architectures = _architectures(profile, goarch)
    if architectures:
        result["architectures"] = architectures
    if profile.get("flags"):
        result["flags"] = list(profile["flags"])
    if profile.get("listenerPath"):
        raise InvalidArgument("seccomp profiles with a listenerPath (notify) are not supported by cripy")
    syscalls = []
    for entry in profile.get("syscalls") or []:
        if not _applies(entry, caps, goarch, kernel):
            continue
        syscalls.append(_oci_syscall(entry))
    result["syscalls"] = syscalls
    return result


def _architectures(profile: dict[str, Any], goarch: str) -> list[str]:
    if profile.get("architectures"):
        return list(profile["architectures"])
    native = ARCH_MAP.get(goarch, [])
    for item in profile.get("archMap") or []:
        if native and item.get("architecture") == native[0]:
            return [item["architecture"], *item.get("subArchitectures", [])]
    return []


def _oci_syscall(entry: dict[str, Any]) -> dict[str, Any]:
    names = entry.get("names") or ([entry["name"]] if entry.get("name") else [])
    if not names:
        raise InvalidArgument(f"seccomp profile syscall entry {entry!r} has no names")
    out: dict[str, Any] = {"names": list(names), "action": entry["action"]}
    if "errnoRet" in entry:
        out["errnoRet"] = entry["errnoRet"]
    if entry.get("args"):
        out["args"] = [dict(arg) for arg in entry["args"]]
    return out


def _applies(entry: dict[str, Any], caps: set[str], goarch: str, kernel: tuple[int, int]) -> bool:
    includes = entry.get("includes") or {}
    excludes = entry.get("excludes") or {}
    if includes.get("caps") and not all(c in caps for c in includes["caps"]):
        return False
    if includes.get("arches") and goarch not in includes["arches"]:
        return False
    if includes.get("minKernel") and kernel < _kernel_version(includes["minKernel"]):
        return False
    if excludes.get("caps") and any(c in caps for c in excludes["caps"]):
        return False
    if excludes.get("arches") and goarch in excludes["arches"]:
        return False
    return True


def _kernel_version(release: str) -> tuple[int, int]:
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)
