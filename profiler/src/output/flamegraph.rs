//! Flame graph SVG, drawn by inferno from the folded stacks.

use std::io::{self, Write};

use std::collections::{BTreeSet, HashMap};

use inferno::flamegraph::color::{Color, MultiPalette, Palette, PaletteMap};
use inferno::flamegraph::{self, Options, TextTruncateDirection};

use super::{folded, frame_label, short_label, OutputError};
use crate::profile::{FrameKind, Profile};

/// inferno's script derives a box's label from its tooltip (`<title>`)
/// minus the trailing `(N samples, P%)`. The tooltip's first line is the
/// short label and the full names follow on the next lines, so the label
/// must be read from the first line only.
const LABEL_FROM_TITLE: &str = r#"find_child(e, "title").textContent.replace(/\([^(]*\)$/,"")"#;
const LABEL_FROM_TITLE_FIRST_LINE: &str =
    r#"find_child(e, "title").textContent.split("\n")[0].replace(/\([^(]*\)$/,"")"#;

/// Full names of the frames whose short label is not their full label, by
/// short label (several C++ overloads or template instances share one).
fn full_names(profile: &Profile) -> HashMap<String, BTreeSet<String>> {
    let mut full: HashMap<String, BTreeSet<String>> = HashMap::new();
    for frame in profile.frames() {
        let (short, long) = (short_label(frame), frame_label(frame));
        if short != long {
            full.entry(folded::clean(&short)).or_default().insert(long);
        }
    }
    full
}

/// Puts each frame's full names in its tooltip, under the short label and
/// counts inferno wrote, and makes inferno's script label boxes from the
/// first line only.
fn with_full_names(svg: &str, full: &HashMap<String, BTreeSet<String>>) -> String {
    let mut out = String::with_capacity(svg.len() + svg.len() / 4);
    let mut rest = svg;
    while let Some(at) = rest.find("<title>") {
        let body = at + "<title>".len();
        let Some(len) = rest[body..].find("</title>") else {
            break;
        };
        let title = &rest[body..body + len];
        out.push_str(&rest[..body]);
        out.push_str(title);
        // `label (N samples, P%)`: the label is everything before the last ` (`.
        if let Some(names) = title
            .rfind(" (")
            .and_then(|cut| full.get(&xml_unescape(&title[..cut])))
        {
            for name in names {
                out.push('\n');
                out.push_str(&xml_escape(name));
            }
        }
        rest = &rest[body + len..];
    }
    out.push_str(rest);
    out.replace(LABEL_FROM_TITLE, LABEL_FROM_TITLE_FIRST_LINE)
}

/// Greens for JS with a script. inferno's `js` palette paints a `_[j]`
/// frame green only when its name has a `/`, which short labels lack; the
/// shade varies by name as inferno's does.
fn js_greens(profile: &Profile) -> PaletteMap {
    let mut map = PaletteMap::default();
    for frame in profile.frames() {
        if frame.kind != FrameKind::Js || frame.location.is_empty() {
            continue;
        }
        let field = format!("{}_[j]", folded::clean(&short_label(frame)));
        // FNV-1a: a stable shade per name, run after run.
        let hash = field.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let v = (hash % 1000) as f32 / 1000.0;
        let shade = |base: f32, range: f32| (base + range * v) as u8;
        map.insert(
            field,
            Color {
                r: shade(50.0, 60.0),
                g: shade(200.0, 55.0),
                b: shade(50.0, 60.0),
            },
        );
    }
    map
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Writes a flame graph of `profile`. Boxes are labelled short, function
/// first (`fib fib.js:3`, `v8::internal::Invoke`), and cut on the right;
/// the tooltip adds the full names. Colours (inferno's `js` palette):
/// JS green (aqua without a script), JIT stubs aqua, C++ yellow, other native
/// red, kernel orange.
pub fn write_flamegraph(
    profile: &Profile,
    title: &str,
    mut w: impl Write,
) -> Result<(), OutputError> {
    let lines = folded::fold(profile, true, short_label);
    if lines.is_empty() {
        // inferno refuses empty input; an SVG that says so is more useful than no file.
        write!(
            w,
            r##"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="1200" height="90" xmlns="http://www.w3.org/2000/svg">
<rect x="0" y="0" width="100%" height="100%" fill="#eeeeee"/>
<text x="50%" y="30" text-anchor="middle" font-family="Verdana" font-size="17">{}</text>
<text x="50%" y="60" text-anchor="middle" font-family="Verdana" font-size="14">No samples were recorded.</text>
</svg>
"##,
            xml_escape(title)
        )?;
        w.flush()?;
        return Ok(());
    }
    let mut opt = Options::default();
    opt.title = title.to_string();
    opt.subtitle = Some(format!(
        "pid {}, {} samples at {} Hz over {:.1} s",
        profile.pid,
        profile.samples.len(),
        profile.frequency_hz,
        profile.duration_ns() as f64 / 1e9
    ));
    opt.colors = Palette::Multi(MultiPalette::Js);
    // Colour by name hash rather than at random, so reruns look alike.
    opt.hash = true;
    opt.count_name = "samples".into();
    let mut greens = js_greens(profile);
    opt.palette_map = Some(&mut greens);
    // A narrow box keeps the function's name, not the end of a path.
    opt.text_truncate_direction = TextTruncateDirection::Right;
    let mut svg = Vec::new();
    flamegraph::from_lines(&mut opt, lines.iter().map(String::as_str), &mut svg).map_err(|e| {
        // inferno reports bad input as InvalidData; anything else came from the writer.
        if e.kind() == io::ErrorKind::InvalidData {
            OutputError::FlameGraph(e.to_string())
        } else {
            OutputError::Io(e)
        }
    })?;
    let svg = String::from_utf8_lossy(&svg);
    w.write_all(with_full_names(&svg, &full_names(profile)).as_bytes())?;
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::testdata::{js, sample_profile};
    use crate::profile::{Frame, FrameKind};

    fn svg(p: &Profile, title: &str) -> String {
        let mut buf = Vec::new();
        write_flamegraph(p, title, &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    /// Fill colour of the frame whose tooltip starts with `label (`.
    fn fill(svg: &str, label: &str) -> (u8, u8, u8) {
        let at = svg
            .find(&format!("<title>{label} ("))
            .unwrap_or_else(|| panic!("{label} not in svg"));
        let rest = &svg[at..];
        let rgb = &rest[rest.find("fill=\"rgb(").unwrap() + 10..];
        let v: Vec<u8> = rgb[..rgb.find(')').unwrap()]
            .split(',')
            .map(|c| c.trim().parse().unwrap())
            .collect();
        (v[0], v[1], v[2])
    }

    #[test]
    fn contains_frames_and_title() {
        let s = svg(&sample_profile(), "nodeprof <pid 100>");
        assert!(s.starts_with("<?xml"));
        assert!(s.trim_end().ends_with("</svg>"));
        assert!(s.contains("nodeprof &lt;pid 100&gt;"));
        for label in [
            "node::Start",
            "main main.js:1",
            "fib fib.js:3",
            "ksys_write",
            "libuv-worker",
            "V8 GC",
        ] {
            assert!(s.contains(&format!("<title>{label} (")), "{label}");
        }
        // Annotations are for colouring only; inferno strips them from labels.
        assert!(!s.contains("_[j]") && !s.contains("_[k]"));
        // The tooltip: short label and counts, then the full name.
        assert!(
            s.contains("<title>fib fib.js:3 (3 samples, 33.33%)\nfib file:///app/fib.js:3</title>")
        );
        assert!(
            s.contains(">fib fib.js:3</text>"),
            "the box shows the short label"
        );
    }

    #[test]
    fn native_labels_drop_arguments_and_keep_them_in_the_tooltip() {
        let mut p = Profile::new(1, 99, 0);
        let full = "v8::internal::(anonymous namespace)::Invoke(v8::internal::Isolate*, v8::internal::(anonymous namespace)::InvokeParams const&)";
        let invoke = p.intern_frame(Frame::new(FrameKind::Native, full, "/usr/bin/node"));
        let other = p.intern_frame(Frame::new(
            FrameKind::Native,
            "v8::internal::(anonymous namespace)::Invoke(int)",
            "/usr/bin/node",
        ));
        let a = p.intern_stack(vec![invoke]);
        let b = p.intern_stack(vec![other]);
        p.add_sample(1, 1, "node", a);
        p.add_sample(2, 1, "node", b);
        let s = svg(&p, "t");
        // Overloads share the short label; the tooltip lists both.
        assert!(
            s.contains(&format!(
                "<title>v8::internal::(anonymous namespace)::Invoke (2 samples, 100.00%)\n{}\n{}</title>",
                xml_escape("v8::internal::(anonymous namespace)::Invoke(int)"),
                xml_escape(full)
            )),
            "{s}"
        );
        // inferno's script labels boxes from the tooltip's first line only.
        assert!(s.contains(LABEL_FROM_TITLE_FIRST_LINE));
        assert!(!s.contains(LABEL_FROM_TITLE));
    }

    #[test]
    fn narrow_boxes_keep_the_function_name() {
        let mut p = Profile::new(1, 99, 0);
        let wide = p.intern_frame(js("main", "file:///app/main.js", 0, 0));
        let narrow = p.intern_frame(js(
            "fibonacciOfTheWorkload",
            "file:///srv/deep/path/workload.js",
            60,
            0,
        ));
        let a = p.intern_stack(vec![wide]);
        let b = p.intern_stack(vec![wide, narrow]);
        for t in 0..60 {
            p.add_sample(t, 1, "node", a);
        }
        for t in 0..2 {
            p.add_sample(100 + t, 1, "node", b);
        }
        let s = svg(&p, "t");
        let title = s
            .find("<title>fibonacciOfTheWorkload workload.js:61 (")
            .unwrap();
        let text = &s[title..];
        let text = &text[text.find("<text").unwrap()..];
        let label = &text[text.find('>').unwrap() + 1..text.find("</text>").unwrap()];
        assert!(label.starts_with("fib") && label.ends_with(".."), "{label}");
    }

    #[test]
    fn colours_by_kind() {
        let s = svg(&sample_profile(), "t");
        let (r, g, b) = fill(&s, "fib fib.js:3");
        assert!(g > r && g > b, "JS green: {r},{g},{b}");
        let (r, g, b) = fill(&s, "ksys_write");
        assert!(r > g && b == 0, "kernel orange: {r},{g},{b}");
        let (r, g, b) = fill(&s, "Builtin:CallFunction");
        assert!(g > r && b > r, "JIT aqua: {r},{g},{b}");
        let (r, g, b) = fill(&s, "node::Start");
        assert!(r == g && b < r, "C++ yellow: {r},{g},{b}");
        let (r, g, b) = fill(&s, "write");
        assert!(r > g && r > b, "native red: {r},{g},{b}");
        assert_eq!(s, svg(&sample_profile(), "t"), "deterministic");
    }

    #[test]
    fn empty_profile_still_makes_svg() {
        let s = svg(&Profile::new(1, 99, 0), "empty & done");
        assert!(s.contains("No samples were recorded."));
        assert!(s.contains("empty &amp; done"));
        assert!(s.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn writer_errors_are_io() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        assert!(matches!(
            write_flamegraph(&sample_profile(), "t", Broken),
            Err(OutputError::Io(_))
        ));
    }
}
