//! `nodeprof heap diff`: DevTools' Comparison view. Objects keep their id
//! across the snapshots of one process, so per class the sorted id lists of
//! the two snapshots are merged: ids only in the current snapshot are new,
//! ids only in the base one were deleted.

use crate::output::Report;
use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::report;
use super::snapshot::HeapSnapshot;

/// The objects of one snapshot, per class, sorted by id: what a comparison
/// needs, without the graph (so the base snapshot can be dropped early).
pub struct Objects {
    pub class_names: Vec<String>,
    /// (class, id, shallow size), sorted by class then id.
    entries: Vec<(u32, u32, u64)>,
}

impl Objects {
    /// Objects with a non-zero shallow size, as DevTools' aggregates.
    pub fn of(s: &HeapSnapshot) -> Objects {
        let mut entries: Vec<(u32, u32, u64)> = (0..s.node_count())
            .filter(|&n| s.node_self[n] != 0)
            .map(|n| (s.class_of[n], s.node_id[n], s.node_self[n]))
            .collect();
        entries.sort_unstable();
        Objects {
            class_names: s.class_names.clone(),
            entries,
        }
    }

    /// (class name, its entries) per class present.
    fn by_class(&self) -> HashMap<&str, &[(u32, u32, u64)]> {
        let mut out = HashMap::new();
        let mut start = 0;
        while start < self.entries.len() {
            let class = self.entries[start].0;
            let len = self.entries[start..]
                .iter()
                .take_while(|e| e.0 == class)
                .count();
            out.insert(
                self.class_names[class as usize].as_str(),
                &self.entries[start..start + len],
            );
            start += len;
        }
        out
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClassDiff {
    pub name: String,
    /// Objects only in the current snapshot (`None` when comparing by counts).
    pub new: Option<u64>,
    /// Objects only in the base snapshot (`None` when comparing by counts).
    pub deleted: Option<u64>,
    pub count_delta: i64,
    /// Shallow size of the new objects (by id) or of the current snapshot's objects (by count).
    pub alloc_size: u64,
    /// Shallow size of the deleted objects (by id) or of the base snapshot's objects (by count).
    pub freed_size: u64,
    pub size_delta: i64,
}

#[derive(Debug, Serialize)]
pub struct Diff {
    /// `"ids"`: objects matched by id (same process); `"counts"`: the snapshots
    /// share no object (or their ids do not come from one process), only
    /// per-class totals are compared.
    pub mode: &'static str,
    /// Objects present in both snapshots (same id, same class).
    pub shared_objects: u64,
    pub base_objects: u64,
    pub current_objects: u64,
    /// Classes that changed, by size delta (largest growth first).
    pub classes: Vec<ClassDiff>,
    /// Classes the text lists (0: all).
    #[serde(skip)]
    pub shown: usize,
}

/// Per-class result of merging two sorted id lists.
#[derive(Default)]
struct Merged {
    new: u64,
    deleted: u64,
    alloc: u64,
    freed: u64,
    shared: u64,
    /// New JS objects (odd ids) with an id below the base's highest one.
    old_ids: u64,
}

/// Merges two sorted id lists.
fn merge(base: &[(u32, u32, u64)], cur: &[(u32, u32, u64)], base_max_id: u32) -> Merged {
    let (mut i, mut j) = (0, 0);
    let (mut new, mut deleted, mut alloc, mut freed, mut shared) = (0, 0, 0, 0, 0);
    let mut old_ids = 0;
    let mut added = |id: u32, size: u64| {
        new += 1;
        alloc += size;
        if id % 2 == 1 && id < base_max_id {
            old_ids += 1;
        }
    };
    while i < base.len() && j < cur.len() {
        match base[i].1.cmp(&cur[j].1) {
            std::cmp::Ordering::Less => {
                deleted += 1;
                freed += base[i].2;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                added(cur[j].1, cur[j].2);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                shared += 1;
                i += 1;
                j += 1;
            }
        }
    }
    for b in &base[i..] {
        deleted += 1;
        freed += b.2;
    }
    for c in &cur[j..] {
        added(c.1, c.2);
    }
    Merged {
        new,
        deleted,
        alloc,
        freed,
        shared,
        old_ids,
    }
}

pub fn compare(base: &Objects, current: &Objects) -> Diff {
    let b = base.by_class();
    let c = current.by_class();
    let mut names: Vec<&str> = b.keys().chain(c.keys()).copied().collect();
    names.sort_unstable();
    names.dedup();
    let empty: &[(u32, u32, u64)] = &[];
    // V8 numbers JS objects (odd ids) in the order it first sees them, so in
    // one process an object created after the base snapshot has a higher id
    // than every object of the base. Many new objects with lower ids mean
    // the snapshots come from different processes, whose ids mean nothing
    // to each other.
    let base_max_id = base
        .entries
        .iter()
        .map(|e| e.1)
        .filter(|id| id % 2 == 1)
        .max()
        .unwrap_or(0);
    let mut shared_objects = 0;
    let (mut new_objects, mut old_ids) = (0, 0);
    let mut by_id = Vec::new();
    let mut by_count = Vec::new();
    for name in names {
        let bo = b.get(name).copied().unwrap_or(empty);
        let co = c.get(name).copied().unwrap_or(empty);
        let m = merge(bo, co, base_max_id);
        let Merged {
            new,
            deleted,
            alloc,
            freed,
            shared,
            ..
        } = m;
        shared_objects += shared;
        new_objects += new;
        old_ids += m.old_ids;
        if new != 0 || deleted != 0 {
            by_id.push(ClassDiff {
                name: name.to_string(),
                new: Some(new),
                deleted: Some(deleted),
                count_delta: new as i64 - deleted as i64,
                alloc_size: alloc,
                freed_size: freed,
                size_delta: alloc as i64 - freed as i64,
            });
        }
        let (bs, cs): (u64, u64) = (bo.iter().map(|e| e.2).sum(), co.iter().map(|e| e.2).sum());
        if bo.len() != co.len() || bs != cs {
            by_count.push(ClassDiff {
                name: name.to_string(),
                new: None,
                deleted: None,
                count_delta: co.len() as i64 - bo.len() as i64,
                alloc_size: cs,
                freed_size: bs,
                size_delta: cs as i64 - bs as i64,
            });
        }
    }
    let same_process = shared_objects > 0 && old_ids <= new_objects / 100 + 10;
    let (mode, mut classes) = if same_process {
        ("ids", by_id)
    } else {
        ("counts", by_count)
    };
    classes.sort_by(|x, y| {
        y.size_delta
            .cmp(&x.size_delta)
            .then(y.count_delta.cmp(&x.count_delta))
            .then_with(|| x.name.cmp(&y.name))
    });
    Diff {
        mode,
        shared_objects,
        base_objects: base.entries.len() as u64,
        current_objects: current.entries.len() as u64,
        classes,
        shown: 0,
    }
}

impl Report for Diff {
    fn write_text(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        w.write_all(render(self, self.shown).as_bytes())
    }
}

fn headline(c: &ClassDiff) -> String {
    format!(
        "{} {} objects, {}",
        report::cell(&c.name, 80),
        report::signed(c.count_delta),
        report::signed_bytes(c.size_delta)
    )
}

/// The comparison as text: the biggest growths first, as sentences, then the table.
fn render(d: &Diff, top: usize) -> String {
    let mut out = String::new();
    let growing: Vec<&ClassDiff> = d
        .classes
        .iter()
        .filter(|c| c.size_delta > 0)
        .take(3)
        .collect();
    if growing.is_empty() {
        // The largest shrinkage first: a leak given the wrong way round shows here.
        let mut shrinking: Vec<&ClassDiff> =
            d.classes.iter().filter(|c| c.size_delta < 0).collect();
        shrinking.sort_by_key(|c| (c.size_delta, c.count_delta));
        if d.classes.is_empty() {
            let _ = writeln!(out, "Nothing changed.");
        } else if shrinking.is_empty() {
            let _ = writeln!(out, "Nothing grew.");
        } else {
            let _ = writeln!(
                out,
                "Nothing grew. What shrank (is the base snapshot the later one?):"
            );
        }
        for c in shrinking.iter().take(3) {
            let _ = writeln!(out, "{}", headline(c));
        }
    }
    for c in &growing {
        let _ = writeln!(out, "{}", headline(c));
    }
    out.push('\n');
    if d.mode == "ids" {
        let _ = writeln!(
            out,
            "Compared by object id (DevTools Comparison): {} objects in the base, {} now, {} in both.",
            d.base_objects, d.current_objects, d.shared_objects
        );
    } else {
        let _ = writeln!(
            out,
            "The snapshots share no object ids (not two snapshots of one process): compared per-class counts and sizes instead of objects."
        );
    }
    let shown = if top == 0 {
        d.classes.len()
    } else {
        top.min(d.classes.len())
    };
    let _ = writeln!(
        out,
        "Top {shown} of {} changed classes by size delta:",
        d.classes.len()
    );
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let rows: Vec<Vec<String>> = d.classes[..shown]
        .iter()
        .map(|c| {
            vec![
                report::cell(&c.name, 60),
                opt(c.new),
                opt(c.deleted),
                report::signed(c.count_delta),
                report::bytes(c.alloc_size),
                report::bytes(c.freed_size),
                report::signed_bytes(c.size_delta),
            ]
        })
        .collect();
    let header: &[&str] = if d.mode == "ids" {
        &[
            "Constructor",
            "# New",
            "# Deleted",
            "# Delta",
            "Alloc. size",
            "Freed size",
            "Size delta",
        ]
    } else {
        &[
            "Constructor",
            "# New",
            "# Deleted",
            "# Delta",
            "Size now",
            "Size before",
            "Size delta",
        ]
    };
    out.push_str(&report::table(header, &rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(classes: &[&str], entries: &[(u32, u32, u64)]) -> Objects {
        let mut entries = entries.to_vec();
        entries.sort_unstable();
        Objects {
            class_names: classes.iter().map(|s| s.to_string()).collect(),
            entries,
        }
    }

    #[test]
    fn merge_by_id_counts_new_and_deleted() {
        // Class indices differ between the snapshots: classes match by name.
        let base = objects(
            &["A", "B"],
            &[(0, 1, 10), (0, 3, 10), (0, 5, 10), (1, 7, 4)],
        );
        let cur = objects(
            &["B", "A", "C"],
            &[(1, 3, 10), (1, 9, 12), (1, 11, 12), (0, 7, 4), (2, 13, 100)],
        );
        let d = compare(&base, &cur);
        assert_eq!(d.mode, "ids");
        assert_eq!(d.shared_objects, 2);
        let get = |n: &str| d.classes.iter().find(|c| c.name == n).cloned();
        let a = get("A").unwrap();
        assert_eq!((a.new, a.deleted, a.count_delta), (Some(2), Some(2), 0));
        assert_eq!((a.alloc_size, a.freed_size, a.size_delta), (24, 20, 4));
        assert_eq!(get("B"), None, "B did not change");
        let c = get("C").unwrap();
        assert_eq!((c.new, c.deleted, c.size_delta), (Some(1), Some(0), 100));
        assert_eq!(d.classes[0].name, "C", "sorted by size growth");
    }

    #[test]
    fn no_shared_ids_falls_back_to_counts() {
        let base = objects(&["A", "B"], &[(0, 1, 10), (1, 3, 4)]);
        let cur = objects(&["A", "B"], &[(0, 5, 10), (0, 7, 10), (1, 9, 4)]);
        let d = compare(&base, &cur);
        assert_eq!(d.mode, "counts");
        assert_eq!(d.classes.len(), 1);
        let a = &d.classes[0];
        assert_eq!(
            (a.name.as_str(), a.new, a.count_delta, a.size_delta),
            ("A", None, 1, 10)
        );
    }

    #[test]
    fn new_objects_with_old_ids_mean_another_process() {
        // One shared id, but 40 "new" objects numbered below the base's highest id.
        let base_entries: Vec<(u32, u32, u64)> = (0..50)
            .map(|i| (0, 1001 + 2 * i, 8))
            .chain([(0, 3001, 8)])
            .collect();
        let cur_entries: Vec<(u32, u32, u64)> = (0..40)
            .map(|i| (0, 2 * i + 1, 8))
            .chain([(0, 1001, 8)])
            .collect();
        let d = compare(
            &objects(&["A"], &base_entries),
            &objects(&["A"], &cur_entries),
        );
        assert_eq!(d.shared_objects, 1);
        assert_eq!(d.mode, "counts");
        // The same, numbered after the base: one process.
        let cur_entries: Vec<(u32, u32, u64)> = (0..40)
            .map(|i| (0, 5001 + 2 * i, 8))
            .chain([(0, 1001, 8)])
            .collect();
        let d = compare(
            &objects(&["A"], &base_entries),
            &objects(&["A"], &cur_entries),
        );
        assert_eq!(d.mode, "ids");
        assert_eq!(
            (d.classes[0].new, d.classes[0].deleted),
            (Some(40), Some(50))
        );
    }

    #[test]
    fn nothing_grew_names_what_shrank() {
        // The files of a leak given the wrong way round.
        let base = objects(
            &["A", "LeakingClass"],
            &[(0, 1, 10), (1, 3, 40), (1, 5, 40), (1, 7, 40)],
        );
        let cur = objects(&["A", "LeakingClass"], &[(0, 1, 10), (1, 3, 40)]);
        let text = render(&compare(&base, &cur), 10);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "Nothing grew. What shrank (is the base snapshot the later one?):"
        );
        assert_eq!(lines[1], "LeakingClass -2 objects, -80 B");
        // Nothing changed at all: no second line.
        let text = render(&compare(&base, &base), 10);
        assert!(text.starts_with("Nothing changed.\n\n"), "{text}");
    }

    #[test]
    fn headline_reads_as_the_answer() {
        let c = ClassDiff {
            name: "LeakingClass".into(),
            new: Some(8300),
            deleted: Some(0),
            count_delta: 8300,
            alloc_size: 332_000,
            freed_size: 0,
            size_delta: 332_000,
        };
        assert_eq!(headline(&c), "LeakingClass +8300 objects, +332 KB");
    }
}
