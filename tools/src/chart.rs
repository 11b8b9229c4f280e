//! The load test's PNG: throughput and p99 latency over time.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

/// Debian's fonts-dejavu-core (installed by localstack/install.sh).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn load_font() -> Result<()> {
    let bytes = std::fs::read(FONT)
        .with_context(|| format!("reading {FONT} (apt-get install fonts-dejavu-core)"))?;
    register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(bytes.into_boxed_slice()),
    )
    .map_err(|_| anyhow!("{FONT} is not a usable font"))
}

/// `points`: (seconds since start, requests/s, p99 ms).
pub fn draw(path: &Path, title: &str, points: &[(f64, f64, f64)]) -> Result<()> {
    load_font()?;
    let root = BitMapBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| anyhow!("{e}"))?;
    let (top, bottom) = root.split_vertically(330);
    let t_max = points.last().map_or(1.0, |p| p.0 * 1.05).max(0.1);
    for (area, name, pick, colour) in [
        (&top, "requests/s", 1usize, BLUE),
        (&bottom, "p99 latency (ms)", 2usize, RED),
    ] {
        let value = |p: &(f64, f64, f64)| if pick == 1 { p.1 } else { p.2 };
        let y_max = points.iter().map(value).fold(0.0, f64::max).max(1.0) * 1.1;
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(name)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.0, value(p))),
                colour.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))
}
