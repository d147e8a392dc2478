//! QR codes of the page's address, so a phone on the LAN can open it by pointing its camera:
//! in the terminal banner (Unicode half blocks, two rows of modules per line of text) and on
//! the page (an SVG served at `/qr.svg`). Drawn here from the `qrcode` crate's modules, so no
//! image library is needed.

use qrcode::{Color, QrCode};

/// Light modules around the code: scanners need a margin.
const QUIET: usize = 2;

/// The code's modules as rows of `true` (dark), with the quiet zone. `None` when `text` is
/// too long for a QR code.
fn modules(text: &str) -> Option<Vec<Vec<bool>>> {
    let code = QrCode::new(text.as_bytes()).ok()?;
    let width = code.width();
    let colors = code.to_colors();
    let size = width + 2 * QUIET;
    let mut rows = vec![vec![false; size]; size];
    for (i, color) in colors.iter().enumerate() {
        rows[QUIET + i / width][QUIET + i % width] = *color == Color::Dark;
    }
    Some(rows)
}

/// For a terminal: dark modules are drawn in the background colour and light ones in the
/// foreground, so it reads on dark terminals (the usual) as black on white.
pub fn terminal(text: &str) -> Option<String> {
    let rows = modules(text)?;
    let mut out = String::new();
    for pair in rows.chunks(2) {
        let (top, bottom) = (&pair[0], pair.get(1));
        for (x, &dark_top) in top.iter().enumerate() {
            let dark_bottom = bottom.is_some_and(|row| row[x]);
            out.push(match (dark_top, dark_bottom) {
                (false, false) => '█',
                (false, true) => '▀',
                (true, false) => '▄',
                (true, true) => ' ',
            });
        }
        out.push('\n');
    }
    Some(out)
}

/// An SVG image: one path of unit squares, black on white, scaled by the page.
pub fn svg(text: &str) -> Option<String> {
    let rows = modules(text)?;
    let size = rows.len();
    let mut path = String::new();
    for (y, row) in rows.iter().enumerate() {
        for (x, _) in row.iter().enumerate().filter(|(_, dark)| **dark) {
            path.push_str(&format!("M{x} {y}h1v1h-1z"));
        }
    }
    Some(format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {size} {size}\" \
         shape-rendering=\"crispEdges\"><rect width=\"{size}\" height=\"{size}\" \
         fill=\"#fff\"/><path d=\"{path}\" fill=\"#000\"/></svg>"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_has_its_finder_patterns_and_margin() {
        let rows = modules("https://192.168.1.5:8443/?call=bob").unwrap();
        // Version 3 is 29 modules wide, plus the margin on both sides.
        assert_eq!(rows.len(), 29 + 2 * QUIET);
        assert!(rows[0].iter().all(|dark| !dark), "the margin is light");
        // The top-left finder pattern: a dark 7x7 ring around a light ring and a dark core.
        let at = |x: usize, y: usize| rows[QUIET + y][QUIET + x];
        assert!((0..7).all(|i| at(i, 0) && at(0, i) && at(i, 6) && at(6, i)));
        assert!(!at(1, 1) && !at(5, 5) && at(3, 3));
    }

    #[test]
    fn the_terminal_drawing_packs_two_rows_per_line() {
        let text = terminal("https://localhost:8443").unwrap();
        let rows = modules("https://localhost:8443").unwrap();
        assert_eq!(text.lines().count(), rows.len().div_ceil(2));
        assert!(text.lines().all(|line| line.chars().count() == rows.len()));
        // The first line is the margin; the second starts the finder pattern: its dark top
        // edge over a row that is dark at its left edge only.
        let lines: Vec<Vec<char>> = text.lines().map(|l| l.chars().collect()).collect();
        assert!(lines[0].iter().all(|c| *c == '█'));
        assert_eq!(lines[1][..QUIET + 2], ['█', '█', ' ', '▄']);
    }

    /// A real reader decodes what is drawn: zbarimg (Debian's zbar-tools) on the modules as
    /// a greyscale image. Skipped without it, except under CI.
    #[test]
    fn a_real_reader_decodes_the_code() {
        use std::io::Write;
        let text = "https://192.168.1.5:8443/?call=B%C3%B6b";
        let rows = modules(text).unwrap();
        let scale = 8;
        let size = rows.len() * scale;
        let mut image = format!("P5 {size} {size} 255\n").into_bytes();
        for row in &rows {
            let line: Vec<u8> = row
                .iter()
                .flat_map(|dark| std::iter::repeat_n(if *dark { 0 } else { 255 }, scale))
                .collect();
            for _ in 0..scale {
                image.extend_from_slice(&line);
            }
        }
        let mut file = tempfile::Builder::new().suffix(".pgm").tempfile().unwrap();
        file.write_all(&image).unwrap();
        let output = match std::process::Command::new("zbarimg")
            .args(["-q", "--raw"])
            .arg(file.path())
            .output()
        {
            Ok(output) => output,
            Err(_) => {
                assert!(std::env::var_os("CI").is_none(), "zbarimg is missing");
                return;
            }
        };
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim_end(), text);
    }

    #[test]
    fn the_svg_draws_one_square_per_dark_module() {
        let rows = modules("x").unwrap();
        let dark = rows.iter().flatten().filter(|d| **d).count();
        let svg = svg("x").unwrap();
        assert_eq!(svg.matches('z').count(), dark);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.ends_with("</svg>"));
        assert!(
            super::svg(&"x".repeat(8000)).is_none(),
            "too long for a QR code"
        );
    }
}
