//! Thread roles: node before 24 leaves every thread named like the process
//! (`node`), so the folded file and flame graph would merge the main thread,
//! workers and pools into one tower. Where the OS name says nothing, a
//! thread is named by what its stacks show it doing: `main`, `worker N` (a
//! thread running its own isolate), `libuv threadpool`, `V8 platform`,
//! `inspector`. Node 24+ names every worker `WorkerThread`: they are
//! numbered too, so that two workers do not fold into one tower. The
//! tid stays in [`super::ThreadInfo`] (and in the `.cpuprofile` node names).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::{FrameKind, Profile};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Worker,
    LibuvPool,
    Platform,
    Inspector,
}

/// The role a native frame shows, if any: node's worker entry point,
/// libuv's threadpool loop (`worker` in libuv's threadpool.c), node's V8
/// platform threads.
fn role_of(kind: FrameKind, name: &str) -> Option<Role> {
    if kind != FrameKind::Native {
        return None;
    }
    if name.starts_with("node::worker::Worker::") {
        Some(Role::Worker)
    } else if name == "worker" || name.starts_with("worker(") {
        Some(Role::LibuvPool)
    } else if name.contains("PlatformWorkerThread") || name.contains("DelayedTaskScheduler") {
        Some(Role::Platform)
    } else if name.starts_with("node::inspector::") {
        Some(Role::Inspector)
    } else {
        None
    }
}

/// Renames the threads named like node's executable (or not at all) after
/// their role; threads that named themselves keep their name.
pub fn name_by_role(profile: &mut Profile) {
    let pid = profile.pid;
    // Node before 24 leaves every thread with the executable's name; node
    // 24+ gives all workers one name.
    let says_nothing = |name: &str| {
        name.is_empty() || name == "node" || name == "nodejs" || name == "WorkerThread"
    };
    let unnamed: HashSet<u32> = profile
        .threads
        .values()
        .filter(|t| says_nothing(&t.name))
        .map(|t| t.tid)
        .collect();
    let mut stacks: BTreeMap<u32, BTreeSet<_>> = BTreeMap::new();
    for s in &profile.samples {
        if unnamed.contains(&s.tid) {
            stacks.entry(s.tid).or_default().insert(s.stack);
        }
    }
    let mut roles: BTreeMap<u32, Role> = BTreeMap::new();
    for (tid, ids) in &stacks {
        // The outermost frame with a role decides (a worker's isolate also
        // runs platform tasks it posted, never the other way round).
        let role = ids.iter().find_map(|&id| {
            profile
                .stack(id)
                .iter()
                .map(|&f| profile.frame(f))
                .find_map(|f| role_of(f.kind, &f.name))
        });
        if let Some(role) = role {
            roles.insert(*tid, role);
        }
    }
    let mut workers = 0;
    for (tid, thread) in profile.threads.iter_mut() {
        if !unnamed.contains(tid) {
            continue;
        }
        thread.name = if *tid == pid {
            "main".to_string()
        } else {
            match roles.get(tid) {
                Some(Role::Worker) => {
                    workers += 1;
                    format!("worker {workers}")
                }
                Some(Role::LibuvPool) => "libuv threadpool".to_string(),
                Some(Role::Platform) => "V8 platform".to_string(),
                Some(Role::Inspector) => "inspector".to_string(),
                None => continue,
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Frame;

    fn stack(p: &mut Profile, names: &[&str]) -> crate::profile::StackId {
        let ids = names
            .iter()
            .map(|n| p.intern_frame(Frame::new(FrameKind::Native, *n, "/usr/bin/node")))
            .collect();
        p.intern_stack(ids)
    }

    #[test]
    fn unnamed_threads_get_their_role_and_named_ones_keep_their_name() {
        let mut p = Profile::new(10, 99, 0);
        let main = stack(&mut p, &["node::Start", "uv_run"]);
        let worker = stack(
            &mut p,
            &["start_thread", "node::worker::Worker::Run()", "uv_run"],
        );
        let pool = stack(&mut p, &["start_thread", "worker", "uv__fs_work"]);
        let platform = stack(
            &mut p,
            &[
                "start_thread",
                "node::(anonymous namespace)::PlatformWorkerThread(void*)",
                "v8::internal::ScavengeJob::Task::RunInternal()",
            ],
        );
        let other = stack(&mut p, &["start_thread", "something_else"]);
        let inspector = stack(
            &mut p,
            &[
                "start_thread",
                "node::inspector::(anonymous namespace)::StartIoThreadMain(void*)",
                "sem_wait",
            ],
        );
        for (tid, name, s) in [
            (10, "node", main),
            (14, "node", worker),
            (12, "node", worker),
            (16, "WorkerThread", worker),
            (18, "WorkerThread", other),
            (19, "node", inspector),
            (20, "node", pool),
            (21, "node", pool),
            (30, "node", platform),
            (40, "node", other),
            (50, "inspector", other),
        ] {
            p.add_sample(1, tid, name, s);
        }
        name_by_role(&mut p);
        let names: Vec<(u32, &str)> = p
            .threads
            .values()
            .map(|t| (t.tid, t.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                (10, "main"),
                (12, "worker 1"),
                (14, "worker 2"),
                (16, "worker 3"),
                (18, "WorkerThread"),
                (19, "inspector"),
                (20, "libuv threadpool"),
                (21, "libuv threadpool"),
                (30, "V8 platform"),
                (40, "node"),
                (50, "inspector"),
            ]
        );
    }

    #[test]
    fn threads_that_name_themselves_are_left_alone() {
        // node 24+: every thread has a name of its own.
        let mut p = Profile::new(10, 99, 0);
        let s = stack(&mut p, &["start_thread", "worker"]);
        p.add_sample(1, 10, "MainThread", s);
        p.add_sample(1, 11, "libuv-worker", s);
        name_by_role(&mut p);
        assert_eq!(p.thread_name(10), "MainThread");
        assert_eq!(p.thread_name(11), "libuv-worker");
        // A main thread alone is still the main thread.
        let mut p = Profile::new(10, 99, 0);
        let s = stack(&mut p, &["node::Start"]);
        p.add_sample(1, 10, "node", s);
        name_by_role(&mut p);
        assert_eq!(p.thread_name(10), "main");
    }
}
