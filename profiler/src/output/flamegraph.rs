//! Flame graph SVG, drawn by inferno from the folded stacks.

use std::io::{self, Write};

use inferno::flamegraph::color::{MultiPalette, Palette};
use inferno::flamegraph::{self, Options};

use super::{folded, OutputError};
use crate::profile::Profile;

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Writes a flame graph of `profile`. Colours (inferno's `js` palette):
/// JS green (aqua without a script), JIT stubs aqua, C++ yellow, other native
/// red, kernel orange.
pub fn write_flamegraph(
    profile: &Profile,
    title: &str,
    mut w: impl Write,
) -> Result<(), OutputError> {
    let lines = folded::fold(profile, true);
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
    flamegraph::from_lines(&mut opt, lines.iter().map(String::as_str), &mut w).map_err(|e| {
        // inferno reports bad input as InvalidData; anything else came from the writer.
        if e.kind() == io::ErrorKind::InvalidData {
            OutputError::FlameGraph(e.to_string())
        } else {
            OutputError::Io(e)
        }
    })?;
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::testdata::sample_profile;

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
            "main file:///app/main.js:1",
            "fib file:///app/fib.js:3",
            "ksys_write",
            "libuv-worker",
            "V8 GC",
        ] {
            assert!(s.contains(&format!("<title>{label} (")), "{label}");
        }
        // Annotations are for colouring only; inferno strips them from labels.
        assert!(!s.contains("_[j]") && !s.contains("_[k]"));
        assert!(s.contains("fib file:///app/fib.js:3 (3 samples, 33.33%)"));
    }

    #[test]
    fn colours_by_kind() {
        let s = svg(&sample_profile(), "t");
        let (r, g, b) = fill(&s, "fib file:///app/fib.js:3");
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
