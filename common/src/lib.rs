//! Types shared by the eBPF programs (`probe-ebpf`) and user space (`profiler`).
//! Everything is `#[repr(C)]` and plain old data: the kernel writes these bytes,
//! user space reads them back.
#![no_std]

/// Deepest user stack the sampler walks (frame-pointer chain): V8's own
/// profiler keeps 255 frames (`TickSample::kMaxFramesCount`). The TypeScript
/// compiler's recursion reaches about 190 JS frames; 128 cut 2.6–3.4 % of
/// its stacks. Each frame costs the verifier about 480 instructions.
pub const MAX_USER_FRAMES: usize = 256;
/// Deepest kernel stack the sampler records.
pub const MAX_KERNEL_FRAMES: usize = 64;
/// The samples' ring as the eBPF object declares it: 8 MiB, about 950
/// records. A recording may size it larger (`probe::samples_ring_bytes`).
pub const SAMPLES_RING_BYTES: u32 = 8 << 20;
/// Length of a task's `comm` (thread name), NUL padded.
pub const COMM_LEN: usize = 16;

/// Name of the ring buffer map samples travel through.
pub const SAMPLES_MAP: &str = "SAMPLES";
/// Name of the hash map of target tgids (key: tgid, value: unused).
pub const TARGETS_MAP: &str = "TARGETS";
/// Name of the per-CPU array counting samples dropped because the ring buffer was full.
pub const LOST_MAP: &str = "LOST";
/// Name of the hash map of per-target V8 layouts (key: tgid, value: [`V8ProbeConfig`]).
pub const V8_CONFIGS_MAP: &str = "V8_CONFIGS";
/// Name of the array of every covered object's unwind rows ([`UnwindRow`]),
/// each object's rows sorted by pc and stored once.
pub const UNWIND_ROWS_MAP: &str = "UNWIND_ROWS";
/// Name of the hash map of per-target unwind tables (key: tgid, value: [`UnwindTable`]).
pub const UNWIND_TABLES_MAP: &str = "UNWIND_TABLES";
/// Name of the perf_event sampler program.
pub const SAMPLER_PROGRAM: &str = "nodeprof_sample";
/// Name of the `sched_process_exec` tracepoint program that drops a
/// target's unwind table at its exec.
pub const UNWIND_EXEC_PROGRAM: &str = "nodeprof_unwind_exec";
/// Name of the hash map of each target's exec count, as that program saw them
/// (key: tgid, value: u64).
pub const UNWIND_EXECS_MAP: &str = "UNWIND_EXECS";

/// Name of the `sched_switch` tracepoint program (off-CPU time).
pub const SWITCH_PROGRAM: &str = "nodeprof_switch";
/// Names of the tracepoint programs on `epoll_wait` entry and exit (event-loop turns).
pub const LOOP_ENTER_PROGRAM: &str = "nodeprof_loop_enter";
pub const LOOP_EXIT_PROGRAM: &str = "nodeprof_loop_exit";
/// Name of the ring buffer of [`ThreadEvent`]s.
pub const THREAD_EVENTS_MAP: &str = "THREAD_EVENTS";
/// Name of the hash map of target threads off CPU (key: tid, value: [`OffCpu`]).
pub const OFF_CPU_MAP: &str = "OFF_CPU";
/// Name of the array holding the [`SwitchConfig`] (one entry).
pub const SWITCH_CONFIG_MAP: &str = "SWITCH_CONFIG";

/// [`SampleRecord::kind`] of a sample taken by the `cpu-clock` timer: the thread ran.
pub const SAMPLE_ON_CPU: u16 = 0;
/// [`SampleRecord::kind`] of a stack taken as the thread left the CPU
/// (`sched_switch`); its time is the start of its off-CPU interval.
pub const SAMPLE_OFF_CPU: u16 = 1;

/// Where `sched_switch`'s fields are (from its tracefs `format`), and whether
/// off-CPU stacks are wanted.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct SwitchConfig {
    pub prev_state_offset: u32,
    pub next_pid_offset: u32,
}

/// A target thread that left the CPU, until it comes back.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct OffCpu {
    pub start_ns: u64,
    pub tgid: u32,
    pub _pad: u32,
}

/// [`ThreadEvent::kind`]: a target thread came back on CPU after [`OffCpu::start_ns`].
pub const EVENT_SWITCH_IN: u32 = 1;
/// [`ThreadEvent::kind`]: a thread entered `epoll_wait` (its event-loop turn ended).
pub const EVENT_LOOP_ENTER: u32 = 2;
/// [`ThreadEvent::kind`]: a thread returned from `epoll_wait` (a turn starts).
pub const EVENT_LOOP_EXIT: u32 = 3;

/// A small per-thread event: a switch back onto the CPU, or an event-loop
/// thread entering or leaving `epoll_wait`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct ThreadEvent {
    /// `bpf_ktime_get_ns()` of the event.
    pub time_ns: u64,
    /// For [`EVENT_SWITCH_IN`]: when the thread left the CPU; else 0.
    pub start_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub kind: u32,
    /// For [`EVENT_LOOP_ENTER`]: the epoll instance waited on (a loop's own;
    /// a synchronous child process runs a loop of its own); else -1.
    pub epfd: i32,
}

/// Offset of `epfd` in the `sys_enter_epoll_wait` (and `pwait`, `pwait2`)
/// tracepoint record: the first syscall argument, after the common fields
/// and `__syscall_nr`.
pub const EPOLL_ENTER_EPFD_OFFSET: usize = 16;

/// `sched_switch`'s `prev_state` bits of a thread that is exiting
/// (EXIT_DEAD, EXIT_ZOMBIE): it will never come back on a CPU.
pub const TASK_EXITING: i64 = 0x10 | 0x20;

/// Name of the per-CPU array counting thread events dropped (buffer full).
pub const THREAD_EVENTS_LOST_MAP: &str = "THREAD_EVENTS_LOST";

/// Name of the ring buffer that carries [`CallEvent`]s of the GC uprobes.
pub const CALLS_MAP: &str = "CALLS";
/// Name of the per-CPU array counting call events dropped because `CALLS` was full.
pub const CALLS_LOST_MAP: &str = "CALLS_LOST";
/// Name of the uprobe program: one program serves every probed function entry,
/// told apart by the attach cookie.
pub const CALL_ENTRY_PROGRAM: &str = "nodeprof_call";
/// Name of the uretprobe program, likewise for function returns.
pub const CALL_RETURN_PROGRAM: &str = "nodeprof_return";

/// Name of the task iterator program (`iter/task`) that reports one thread's
/// saved user registers and kernel stack: how `dump` sees a blocked thread
/// without stopping it.
pub const TASKS_PROGRAM: &str = "nodeprof_tasks";
/// The kernel's iterator target the tasks program attaches to (`bpf_iter_task`).
pub const TASKS_ITER_TARGET: &str = "task";
/// Name of the per-CPU scratch array the tasks program builds its record in
/// (a [`TaskRecord`] is larger than the 512-byte eBPF stack).
pub const TASK_SCRATCH_MAP: &str = "TASK_SCRATCH";

/// One thread as the tasks iterator saw it: the user registers the kernel saved
/// when the thread last entered it (valid while the thread stays in the
/// kernel: blocked, or preempted), and its kernel stack.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TaskRecord {
    /// Number of valid entries in `kernel_stack`.
    pub kernel_frames: u32,
    pub _pad: u32,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// Code segment: `cs & 3 == 3` when the registers are user-mode ones.
    pub cs: u64,
    /// `orig_ax`: the system call number, or -1 when not in a system call.
    pub syscall_nr: i64,
    /// The system call's arguments (rdi, rsi, rdx, r10, r8, r9).
    pub args: [u64; 6],
    /// Kernel instruction pointers, innermost first.
    pub kernel_stack: [u64; MAX_KERNEL_FRAMES],
}

/// One stack sample of a target thread, as the eBPF sampler writes it into the
/// ring buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SampleRecord {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, nanoseconds.
    pub time_ns: u64,
    /// Process id (thread group id) in the root pid namespace.
    pub tgid: u32,
    /// Thread id in the root pid namespace.
    pub tid: u32,
    /// CPU the sample was taken on.
    pub cpu: u32,
    /// Number of valid entries in `kernel_stack` (0 when the thread ran in user mode).
    pub kernel_frames: u32,
    /// Number of valid entries in `user_stack`.
    pub user_frames: u32,
    /// [`SAMPLE_ON_CPU`] or [`SAMPLE_OFF_CPU`].
    pub kind: u16,
    /// For an off-CPU stack: the task state it left in (`sched_switch`'s
    /// `prev_state`: 0x100 preempted, 1 sleeping, 2 uninterruptible…).
    pub state: u16,
    /// The word at the user stack pointer when the first frame of the walk
    /// is a JS frame, else 0: the return address into JS code when the
    /// interrupted function is a leaf without a frame of its own (V8's
    /// `ieee754::sin`…), whose caller the frame-pointer walk cannot see.
    pub user_tos: u64,
    /// Thread name (`comm`), NUL padded.
    pub comm: [u8; COMM_LEN],
    /// Kernel instruction pointers, innermost first.
    pub kernel_stack: [u64; MAX_KERNEL_FRAMES],
    /// User frames, innermost first (the first pc is the interrupted pc, the
    /// rest are return addresses); below the `leaf_pcs` when there are some.
    pub user_stack: [UserFrame; MAX_USER_FRAMES],
    /// How many frames the `.eh_frame` rows unwound before the
    /// frame-pointer walk (`leaf_pcs`); 0 when the walk starts at the
    /// interrupted pc.
    pub leaf_frames: u32,
    pub _pad: u32,
    /// The pcs of those frames, innermost first (the interrupted pc, then
    /// return addresses); `user_stack` holds their callers. Kept apart so
    /// that the verifier checks the frame-pointer walk once, from slot 0.
    pub leaf_pcs: [u64; MAX_UNWIND_LEVELS],
}

/// One frame of the user stack, as the sampler's frame-pointer walk saw it.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq, Hash)]
pub struct UserFrame {
    pub pc: u64,
    /// The raw word at `[fp + fp_context]`: a V8 Context (tagged pointer) in JS
    /// frames, a frame-type marker (`type << 1`) in typed V8 frames, garbage
    /// elsewhere. User space interprets it only when `pc` is V8 code.
    pub frame_marker: u64,
    /// Tagged address of the frame's SharedFunctionInfo, verified by its map's
    /// instance type at sample time; 0 when the frame is not a JS frame.
    pub sfi: u64,
    /// The SFI's `name_or_scope_info` word at sample time: if GC later moves
    /// another object to the same address, the fingerprint no longer matches.
    pub sfi_fingerprint: u64,
}

/// V8 object layout of one target, read by user space from the node binary's
/// `v8dbg_*` symbols, consumed by the sampler to recognise JS frames.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct V8ProbeConfig {
    /// Byte offset from fp of the context-or-frame-type slot (-8 on x86-64).
    pub fp_context: i32,
    /// Byte offset from fp of the JSFunction slot (-16 on x86-64).
    pub fp_function: i32,
    /// Offset of `JSFunction::shared` from the untagged object start.
    pub jsfunction_shared: u32,
    /// Offset of `HeapObject::map`.
    pub heap_object_map: u32,
    /// Offset of `Map::instance_type` (u16).
    pub map_instance_type: u32,
    /// Offset of `SharedFunctionInfo::name_or_scope_info`.
    pub sfi_name_or_scope_info: u32,
    /// Instance type of SharedFunctionInfo.
    pub sfi_instance_type: u16,
    /// Tag of heap object pointers (1) and its mask (3).
    pub heap_object_tag: u8,
    pub heap_object_tag_mask: u8,
    pub _pad: u32,
}

/// Integer argument registers a [`CallEvent`] carries (all of x86-64's).
pub const CALL_VALUES: usize = 6;
/// Words of target memory a [`CallEvent`] can carry.
pub const CALL_WORDS: usize = 6;
/// Name of the hash map of memory reads per probe (key: attach cookie, value: [`CallReads`]).
pub const CALL_READS_MAP: &str = "CALL_READS";

/// Words to read at entry, relative to the first argument (`this` of a C++
/// method): how a probe sees an object's fields as they are at that instant.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct CallReads {
    /// Byte offsets from the first argument.
    pub offsets: [u32; CALL_WORDS],
    /// How many of `offsets` to read.
    pub count: u32,
    pub _pad: u32,
}

/// One entry into or return from a probed function of the target (V8's GC
/// functions). The eBPF side is generic: what a probe means is user space's
/// business, carried in the attach cookie.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct CallEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, nanoseconds.
    pub time_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    /// The attach cookie user space chose for this probe.
    pub cookie: u64,
    /// At entry: the six integer argument registers (rdi, rsi, rdx, rcx, r8,
    /// r9; `this` first for a C++ method). At return: the return value (rax)
    /// in `values[0]`, the rest zero.
    pub values: [u64; CALL_VALUES],
    /// The words [`CallReads`] asked for (entry only), zero where unreadable.
    pub words: [u64; CALL_WORDS],
}

impl SampleRecord {
    pub fn kernel_stack(&self) -> &[u64] {
        &self.kernel_stack[..(self.kernel_frames as usize).min(MAX_KERNEL_FRAMES)]
    }

    pub fn leaf_pcs(&self) -> &[u64] {
        &self.leaf_pcs[..(self.leaf_frames as usize).min(MAX_UNWIND_LEVELS)]
    }

    pub fn user_stack(&self) -> &[UserFrame] {
        &self.user_stack[..(self.user_frames as usize).min(MAX_USER_FRAMES)]
    }

    /// The thread name up to its first NUL.
    pub fn comm(&self) -> &[u8] {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        &self.comm[..end]
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for SampleRecord {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for V8ProbeConfig {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for CallEvent {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for CallReads {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for SwitchConfig {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for OffCpu {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for ThreadEvent {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for TaskRecord {}

/// Rows the [`UNWIND_ROWS_MAP`] holds: 2 MiB of kernel memory; libc needs
/// about 30,000, a typical node process's libraries together under 100,000.
pub const MAX_UNWIND_ROWS: u32 = 1 << 18;
/// Objects (shared libraries) one target's [`UnwindTable`] covers.
pub const MAX_UNWIND_OBJECTS: usize = 8;
/// Frames the sampler unwinds with `.eh_frame` rows before it goes on with
/// frame pointers: a libc leaf and the libc functions that called it.
/// malloc growing the heap is 5 deep (malloc, _int_malloc, sysmalloc,
/// __default_morecore, sbrk), and 4 cut those stacks.
pub const MAX_UNWIND_LEVELS: usize = 8;
/// Steps of the binary search for a row: objects of up to 2^20 rows.
pub const UNWIND_SEARCH_STEPS: usize = 20;

/// [`UnwindRow::cfa`]: no rule the sampler applies (a DWARF expression, a
/// PLT, a gap between functions): unwinding stops there.
pub const CFA_UNKNOWN: u8 = 0;
/// [`UnwindRow::cfa`]: CFA = rsp + offset.
pub const CFA_RSP: u8 = 1;
/// [`UnwindRow::cfa`]: CFA = rbp + offset.
pub const CFA_RBP: u8 = 2;

/// How to find the caller's frame from one address range of an object's
/// code, from its `.eh_frame` (x86-64: the return address is at CFA - 8).
/// Valid from `pc` up to the next row's `pc`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct UnwindRow {
    /// Address relative to [`UnwindObject::bias`].
    pub pc: u32,
    /// Added to the register named by `cfa` to give the CFA.
    pub cfa_offset: u16,
    /// Where the caller's rbp was saved, in 8-byte words from the CFA
    /// (always negative); 0: rbp still holds the caller's value.
    pub rbp_offset: i8,
    /// [`CFA_RSP`], [`CFA_RBP`] or [`CFA_UNKNOWN`].
    pub cfa: u8,
}

/// One object of a target whose code the sampler unwinds with rows.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct UnwindObject {
    /// Run-time address range of its executable mapping.
    pub start: u64,
    pub end: u64,
    /// Run-time address a row's `pc` is relative to.
    pub bias: u64,
    /// Its rows: `UNWIND_ROWS[first_row .. first_row + rows]`.
    pub first_row: u32,
    pub rows: u32,
}

/// The objects of one target the sampler unwinds with rows.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct UnwindTable {
    pub count: u32,
    pub _pad: u32,
    pub objects: [UnwindObject; MAX_UNWIND_OBJECTS],
}

/// The row that holds for `offset` among `rows` rows from `first` (the last
/// one at or before it), read with `row`; None past [`UNWIND_SEARCH_STEPS`]
/// steps, on a failed read, or before the first row. The sampler's search,
/// shared so that user space tests the very code the kernel runs.
#[inline(always)]
pub fn find_unwind_row(
    first: u32,
    rows: u32,
    offset: u32,
    row: impl Fn(u32) -> Option<UnwindRow>,
) -> Option<UnwindRow> {
    if rows == 0 {
        return None;
    }
    // Invariant: rows[lo].pc <= offset < rows[hi].pc (hi one past the end).
    let mut lo = first;
    let mut hi = first + rows;
    for _ in 0..UNWIND_SEARCH_STEPS {
        if hi - lo <= 1 {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        if row(mid)?.pc <= offset {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    if hi - lo > 1 {
        return None;
    }
    let found = row(lo)?;
    (found.pc <= offset).then_some(found)
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for UnwindRow {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for UnwindTable {}
