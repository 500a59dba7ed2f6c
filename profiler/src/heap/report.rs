//! Number formatting and plain-text tables for the `heap` commands.

use super::graph::{BASE_SYSTEM_DISTANCE, NO_DISTANCE};

/// Bytes in decimal units as DevTools shows them: `332 KB`, `10.0 MB`.
pub fn bytes(n: u64) -> String {
    let f = n as f64;
    if n < 1000 {
        format!("{n} B")
    } else if f < 1e6 {
        format!("{:.0} KB", f / 1e3)
    } else if f < 1e9 {
        format!("{:.1} MB", f / 1e6)
    } else {
        format!("{:.2} GB", f / 1e9)
    }
}

/// Signed byte delta: `+332 KB`, `-1.5 MB`, `0 B`.
pub fn signed_bytes(n: i64) -> String {
    match n {
        0 => "0 B".into(),
        n if n > 0 => format!("+{}", bytes(n.unsigned_abs())),
        n => format!("-{}", bytes(n.unsigned_abs())),
    }
}

/// Signed count: `+8300`, `-3`, `0`.
pub fn signed(n: i64) -> String {
    if n > 0 {
        format!("+{n}")
    } else {
        n.to_string()
    }
}

/// A distance as DevTools shows it: `-` when unreachable; distances of
/// objects reached only through GC roots as `sys+N`.
pub fn distance(d: Option<i32>) -> String {
    match d {
        None | Some(NO_DISTANCE) => "-".into(),
        Some(d) if d >= BASE_SYSTEM_DISTANCE => format!("sys+{}", d - BASE_SYSTEM_DISTANCE),
        Some(d) => d.to_string(),
    }
}

/// Shortens a class name to `max` characters for a table cell.
pub fn cell(s: &str, max: usize) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= max {
        one_line
    } else {
        let mut t: String = one_line.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Renders rows as left-aligned first column and right-aligned others.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, c) in row.iter().enumerate().take(cols) {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = width[i].saturating_sub(c.chars().count());
            if i == 0 {
                l.push_str(c);
                l.push_str(&" ".repeat(pad));
            } else {
                l.push_str("  ");
                l.push_str(&" ".repeat(pad));
                l.push_str(c);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(332_000), "332 KB");
        assert_eq!(bytes(10_000_024), "10.0 MB");
        assert_eq!(signed_bytes(332_000), "+332 KB");
        assert_eq!(signed_bytes(-1_500_000), "-1.5 MB");
        assert_eq!(signed(8300), "+8300");
        assert_eq!(signed(-2), "-2");
        assert_eq!(distance(Some(NO_DISTANCE)), "-");
        assert_eq!(distance(Some(BASE_SYSTEM_DISTANCE + 2)), "sys+2");
        assert_eq!(distance(Some(3)), "3");
    }

    #[test]
    fn table_aligns() {
        let t = table(
            &["Class", "Count"],
            &[
                vec!["A".into(), "1".into()],
                vec!["Long".into(), "100".into()],
            ],
        );
        assert_eq!(t, "Class  Count\nA          1\nLong     100\n");
    }
}
