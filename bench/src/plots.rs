//! The SVG plots of `docs/BENCHMARKS.md`, drawn with plotters.

use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

use crate::report::Figures;
use crate::swarm::STORM_BUCKET_MS;

type Drawn = Result<(), String>;

fn failed(what: &str) -> impl Fn(String) -> String + '_ {
    move |error| format!("drawing {what}: {error}")
}

/// Every plot into `folder`.
pub(crate) fn draw(folder: &Path, figures: &Figures) -> Drawn {
    std::fs::create_dir_all(folder).map_err(|e| format!("creating {}: {e}", folder.display()))?;
    time_to_ready(&folder.join("time_to_ready.svg"), figures)
        .map_err(failed("the time-to-ready plot"))?;
    throughput(&folder.join("throughput.svg"), figures).map_err(failed("the throughput plot"))?;
    storm(&folder.join("reconnect_storm.svg"), figures).map_err(failed("the storm plot"))?;
    Ok(())
}

/// The share of trials done by each time: readyws next to its baseline.
fn time_to_ready(path: &Path, figures: &Figures) -> Result<(), String> {
    let cdf = |samples: &[Duration]| -> Vec<(f64, f64)> {
        let mut sorted: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len().max(1) as f64;
        sorted
            .into_iter()
            .enumerate()
            .map(|(i, micros)| (micros, (i + 1) as f64 / n))
            .collect()
    };
    let readyws = cdf(&figures.ready_readyws);
    let raw = cdf(&figures.ready_raw);
    // The slowest percent would squeeze the rest into a corner.
    let p99 = |points: &[(f64, f64)]| {
        points
            .iter()
            .find(|(_, share)| *share >= 0.99)
            .map_or(1.0, |(x, _)| *x)
    };
    let max_x = p99(&readyws).max(p99(&raw)) * 1.1;
    let root = SVGBackend::new(path, (800, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Time to ready on 127.0.0.1 (cumulative share of trials)",
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max_x, 0f64..1f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("microseconds")
        .y_desc("share of trials")
        .draw()
        .map_err(|e| e.to_string())?;
    let series = [
        ("readyws: Client created → connection_ready", readyws, BLUE),
        ("raw tokio-tungstenite: connect + one round trip", raw, RED),
    ];
    for (label, points, color) in series {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Acknowledged messages per second, each direction, readyws next to raw.
fn throughput(path: &Path, figures: &Figures) -> Result<(), String> {
    let bars = [
        (0.5, figures.upload_raw, RED),
        (1.5, figures.upload_readyws, BLUE),
        (3.5, figures.download_raw, RED),
        (4.5, figures.download_readyws, BLUE),
    ];
    let max_y = bars.iter().map(|(_, rate, _)| *rate).fold(1.0, f64::max) * 1.15;
    let root = SVGBackend::new(path, (800, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Acknowledged 1 KiB JSON messages per second (median of runs of {})",
                figures.messages
            ),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..6f64, 0f64..max_y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        // Ticks every half unit, so that the groups' centres, 1 and 4, are among them.
        .x_labels(13)
        .x_label_formatter(&|x| {
            if (x - 1.0).abs() < 1e-6 {
                "client → server".to_owned()
            } else if (x - 4.0).abs() < 1e-6 {
                "server → client".to_owned()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{y:.0}"))
        .y_desc("messages per second")
        .draw()
        .map_err(|e| e.to_string())?;
    for (label, color) in [("raw tokio-tungstenite", RED), ("readyws", BLUE)] {
        chart
            .draw_series(
                bars.iter()
                    .filter(|(_, _, c)| *c == color)
                    .map(|(x, rate, c)| {
                        Rectangle::new([(x - 0.4, 0.0), (x + 0.4, *rate)], c.filled())
                    }),
            )
            .map_err(|e| e.to_string())?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Connection attempts over time after the restart began.
fn storm(path: &Path, figures: &Figures) -> Result<(), String> {
    let buckets = &figures.storm.attempts;
    let width = STORM_BUCKET_MS as f64 / 1000.0;
    let max_x = (buckets.len() as f64 * width).max(1.0);
    let max_y = buckets.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.15;
    let root = SVGBackend::new(path, (800, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Reconnect storm: {} sessions, graceful server restart",
                figures.sessions
            ),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_x, 0f64..max_y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("seconds since the restart began")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .y_desc(format!("connection attempts per {STORM_BUCKET_MS} ms"))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(buckets.iter().enumerate().map(|(i, count)| {
            let x = i as f64 * width;
            Rectangle::new([(x, 0.0), (x + width, *count as f64)], BLUE.filled())
        }))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}
