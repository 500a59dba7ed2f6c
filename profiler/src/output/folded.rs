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
    let mut fields: Vec<String> = profile
        .frames()
        .iter()
        .map(|f| field(f, annotate_js, label))
        .collect();
    // Two different JS functions may shorten alike (`(anonymous) index.js:1`
    // in two packages): they keep their full labels, so no box merges them.
    let mut full_of: HashMap<&str, std::collections::HashSet<String>> = HashMap::new();
    for (f, short) in profile.frames().iter().zip(&fields) {
        full_of.entry(short).or_default().insert(frame_label(f));
    }
    let colliding: Vec<usize> = profile
        .frames()
        .iter()
        .enumerate()
        .filter(|(i, f)| f.kind == FrameKind::Js && full_of[fields[*i].as_str()].len() > 1)
        .map(|(i, _)| i)
        .collect();
    drop(full_of);
    for i in colliding {
        fields[i] = field(&profile.frames()[i], annotate_js, frame_label);
    }
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

    /// Two functions that shorten alike are two boxes, not one.
    #[test]
    fn js_functions_alike_in_short_stay_apart() {
        use crate::output::testdata::js;
        let mut p = Profile::new(100, 99, 1_000_000);
        let a = p.intern_frame(js("", "file:///app/node_modules/a/index.js", 0, 0));
        let b = p.intern_frame(js("", "file:///app/node_modules/b/index.js", 0, 0));
        let sa = p.intern_stack(vec![a]);
        let sb = p.intern_stack(vec![b]);
        p.add_sample(1_010_000, 100, "node", sa);
        p.add_sample(1_020_000, 100, "node", sb);
        let lines = fold(&p, true, crate::output::label::short_label);
        assert_eq!(lines.len(), 2, "{lines:?}");
        // A label met once stays short.
        let mut q = Profile::new(100, 99, 1_000_000);
        let c = q.intern_frame(js("main", "file:///app/main.js", 0, 0));
        let sc = q.intern_stack(vec![c]);
        q.add_sample(1_010_000, 100, "node", sc);
        assert_eq!(
            fold(&q, true, crate::output::label::short_label),
            ["node;main main.js:1_[j] 1"]
        );
    }

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
