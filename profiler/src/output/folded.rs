//! Brendan Gregg's folded stacks (`thread;outer;…;leaf count`), inferno's input.

use std::collections::HashMap;
use std::io::Write;

use super::{frame_label, OutputError};
use crate::profile::{Frame, FrameKind, Profile, StackId};

/// `;` separates frames and a newline ends the record, so neither may appear inside one.
pub(crate) fn clean(s: &str) -> String {
    s.replace(';', ":").replace(['\n', '\r'], "")
}

/// A frame as one folded field. Kernel and JIT frames get inferno's `_[k]` /
/// `_[j]` annotations (coloured by `--colors js`, hidden in the labels);
/// `annotate_js` also marks JS frames `_[j]`, which the flame graph uses so
/// JS with a script path is green rather than the palette's `:` heuristic.
fn field(frame: &Frame, annotate_js: bool, label: fn(&Frame) -> String) -> String {
    let mut s = clean(&label(frame));
    match frame.kind {
        FrameKind::Kernel => s.push_str("_[k]"),
        FrameKind::Jit => s.push_str("_[j]"),
        FrameKind::Js if annotate_js => s.push_str("_[j]"),
        _ => {}
    }
    s
}

/// The folded lines, each frame named by `label`.
pub(crate) fn fold(
    profile: &Profile,
    annotate_js: bool,
    label: fn(&Frame) -> String,
) -> Vec<String> {
    let mut per_stack: HashMap<(u32, StackId), u64> = HashMap::new();
    for s in &profile.samples {
        *per_stack.entry((s.tid, s.stack)).or_default() += 1;
    }
    let fields: Vec<String> = profile
        .frames()
        .iter()
        .map(|f| field(f, annotate_js, label))
        .collect();
    // Keyed by thread *name*, so a pool of same-named threads folds into one tower.
    let mut merged: HashMap<String, u64> = HashMap::new();
    for ((tid, stack), n) in per_stack {
        let name = profile.thread_name(tid);
        let mut key = if name.is_empty() {
            "[unknown]".to_string()
        } else {
            clean(name)
        };
        let frames = profile.stack(stack);
        if frames.is_empty() {
            key.push_str(";(program)");
        }
        for &f in frames {
            key.push(';');
            key.push_str(&fields[f.index()]);
        }
        *merged.entry(key).or_default() += n;
    }
    let mut lines: Vec<String> = merged
        .into_iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    lines.sort();
    lines
}

/// The folded lines of `profile`, sorted, one per distinct (thread name, stack).
pub fn folded_lines(profile: &Profile) -> Vec<String> {
    fold(profile, false, frame_label)
}

pub fn write_folded(profile: &Profile, mut w: impl Write) -> Result<(), OutputError> {
    for line in folded_lines(profile) {
        writeln!(w, "{line}")?;
    }
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::testdata::sample_profile;

    #[test]
    fn lines_are_exact() {
        assert_eq!(
            folded_lines(&sample_profile()),
            [
                "V8 GC;(program) 1",
                "libuv-worker;uv_work:loop 2",
                "node;(program) 1",
                "node;node::Start;(garbage collector) 1",
                "node;node::Start;main file:///app/main.js:1;Builtin:CallFunction_[j];write;ksys_write_[k] 1",
                "node;node::Start;main file:///app/main.js:1;fib file:///app/fib.js:3 1",
                "node;node::Start;main file:///app/main.js:1;fib file:///app/fib.js:3;fib file:///app/fib.js:3;fib file:///app/fib.js:3 2",
            ]
        );
    }

    #[test]
    fn annotated_for_flame_graph() {
        let lines = fold(&sample_profile(), true, frame_label);
        assert!(lines.contains(
            &"node;node::Start;main file:///app/main.js:1_[j];fib file:///app/fib.js:3_[j] 1"
                .to_string()
        ));
    }

    #[test]
    fn write_and_empty() {
        let mut buf = Vec::new();
        write_folded(&sample_profile(), &mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(text.lines().count(), 7);
        assert!(text.ends_with(" 2\n"));
        let counts: u64 = text
            .lines()
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(counts, 9);
        assert!(folded_lines(&Profile::new(1, 99, 0)).is_empty());
    }

    #[test]
    fn thread_names_are_cleaned() {
        let mut p = Profile::new(1, 99, 0);
        let f = p.intern_frame(Frame::new(FrameKind::Native, "", "/bin/x"));
        let s = p.intern_stack(vec![f]);
        p.add_sample(1, 1, "a;b\n", s);
        p.add_sample(2, 2, "", s);
        assert_eq!(
            folded_lines(&p),
            ["[unknown];[unknown] 1", "a:b;[unknown] 1"]
        );
    }
}
