//! `seckill chart`: the benchmark chart (plotters) — orders/s and accepted-
//! order p99 against the crowd size, one line per order strategy — drawn
//! from the drill reports `scripts/bench` collects (one JSON object a line).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use plotters::prelude::*;

/// What to draw from and where.
#[derive(Debug, Clone, clap::Args)]
pub struct ChartArgs {
    /// Drill reports, one JSON object a line (`seckill drill --json`);
    /// other lines are skipped.
    #[arg(long, default_value = "docs/bench-results.jsonl")]
    pub input: PathBuf,
    /// The PNG to write.
    #[arg(long, default_value = "docs/bench-chart.png")]
    pub output: PathBuf,
    /// A TrueType font for the labels (default: DejaVu Sans or Liberation
    /// Sans from the system's fonts).
    #[arg(long)]
    pub font: Option<PathBuf>,
}

/// One drill's point: (clients, orders/s, p99 ms).
type Point = (f64, f64, f64);

/// The drill reports of `input`, by strategy, sorted by clients.
pub fn series(input: &str) -> BTreeMap<String, Vec<Point>> {
    let mut by: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    for line in input.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(s), Some(c), Some(o), Some(p)) = (
            v["strategy"].as_str(),
            v["concurrency"].as_f64(),
            v["orders_per_sec"].as_f64(),
            v["order_p99_ms"].as_f64(),
        ) else {
            continue;
        };
        by.entry(s.to_owned()).or_default().push((c, o, p));
    }
    for points in by.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    by
}

const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf",
];

fn load_font(given: Option<&Path>) -> anyhow::Result<()> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => FONTS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .context(
                "no font found for the chart's labels: install fonts-dejavu-core or pass --font",
            )?,
    };
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    // plotters keeps registered fonts for the whole process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{} is not a TrueType font", path.display()))
}

const COLOURS: [RGBColor; 4] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
];

/// Draws the chart; returns the number of drills drawn.
pub fn run(args: &ChartArgs) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let by = series(&text);
    let drawn: usize = by.values().map(Vec::len).sum();
    if drawn == 0 {
        bail!("{} holds no drill report", args.input.display());
    }
    load_font(args.font.as_deref())?;
    draw(&by, &args.output).map_err(|e| anyhow::anyhow!("cannot draw the chart: {e}"))?;
    Ok(drawn)
}

fn draw(
    by: &BTreeMap<String, Vec<Point>>,
    output: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let all: Vec<&Point> = by.values().flatten().collect();
    let (cmin, cmax) = all.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.0), hi.max(p.0))
    });
    let omax = all.iter().map(|p| p.1).fold(1.0, f64::max);
    // The p99 axis always shows the 50 ms target line.
    let (pmin, pmax) = all.iter().fold((50.0f64, 50.0f64), |(lo, hi), p| {
        (lo.min(p.2.max(0.1)), hi.max(p.2))
    });
    let root = BitMapBackend::new(output, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    let x_range = (cmin * 0.8)..(cmax * 1.25);

    let mut orders = ChartBuilder::on(&left)
        .caption("accepted orders/s", ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range.clone().log_scale(), 0.0..omax * 1.15)?;
    orders
        .configure_mesh()
        .x_desc("concurrent clients")
        .y_desc("orders/s")
        .x_labels(4)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 14))
        .draw()?;
    let mut p99 = ChartBuilder::on(&right)
        .caption("accepted-order p99 (ms, log)", ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(
            x_range.log_scale(),
            ((pmin * 0.7)..(pmax * 1.5)).log_scale(),
        )?;
    p99.configure_mesh()
        .x_desc("concurrent clients")
        .y_desc("ms")
        .x_labels(4)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 14))
        .draw()?;
    // The target: p99 at most 50 ms.
    p99.draw_series(LineSeries::new(
        [(cmin * 0.8, 50.0), (cmax * 1.25, 50.0)],
        BLACK.mix(0.4).stroke_width(1),
    ))?
    .label("target 50 ms")
    .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLACK.mix(0.4)));

    for (i, (strategy, points)) in by.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        orders
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.0, p.1)),
                colour.stroke_width(2),
            ))?
            .label(strategy.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
        orders.draw_series(
            points
                .iter()
                .map(|p| Circle::new((p.0, p.1), 4, colour.filled())),
        )?;
        p99.draw_series(LineSeries::new(
            points.iter().map(|p| (p.0, p.2.max(0.1))),
            colour.stroke_width(2),
        ))?
        .label(strategy.as_str())
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
        p99.draw_series(
            points
                .iter()
                .map(|p| Circle::new((p.0, p.2.max(0.1)), 4, colour.filled())),
        )?;
    }
    orders
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    p99.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_grouped_by_strategy_and_sorted_by_clients_and_other_lines_skipped() {
        let text = r#"{"strategy": "db-lock", "concurrency": 1000, "orders_per_sec": 600.0, "order_p99_ms": 900.0}
{"ceiling": true, "bare_rps": 20000}
{"strategy": "db-lock", "concurrency": 100, "orders_per_sec": 650.0, "order_p99_ms": 250.0}
not json
{"strategy": "write-behind", "concurrency": 100, "orders_per_sec": 3000.0, "order_p99_ms": 20.0}"#;
        let by = series(text);
        assert_eq!(by.len(), 2);
        assert_eq!(
            by["db-lock"],
            vec![(100.0, 650.0, 250.0), (1000.0, 600.0, 900.0)]
        );
        assert_eq!(by["write-behind"], vec![(100.0, 3000.0, 20.0)]);
    }

    #[test]
    fn a_chart_is_written_as_png() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("r.jsonl");
        std::fs::write(
            &input,
            r#"{"strategy": "write-behind", "concurrency": 100, "orders_per_sec": 3000.0, "order_p99_ms": 20.0}
{"strategy": "write-behind", "concurrency": 1000, "orders_per_sec": 3500.0, "order_p99_ms": 45.0}
{"strategy": "db-lock", "concurrency": 100, "orders_per_sec": 650.0, "order_p99_ms": 250.0}"#,
        )
        .unwrap();
        let output = dir.path().join("c.png");
        let args = ChartArgs {
            input,
            output: output.clone(),
            font: None,
        };
        if FONTS.iter().all(|f| !Path::new(f).exists()) {
            // No system font: the error says what to install.
            let e = run(&args).unwrap_err().to_string();
            assert!(e.contains("fonts-dejavu-core"), "{e}");
            return;
        }
        assert_eq!(run(&args).unwrap(), 3);
        let png = std::fs::read(&output).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
}
