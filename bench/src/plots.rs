//! The SVG plots of `docs/BENCHMARKS.md`, drawn with plotters. Each shows every run, or the range
//! of the runs, not one figure alone: the noise of the machine is part of what they say.

use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

use crate::common::Spread;
use crate::figures::Sample;
use crate::report::{Both, Figures, cpus, rates};
use crate::swarm::{STORM_BUCKET_MS, Storm};

type Drawn = Result<(), String>;

/// One run's cumulative share of trials: (microseconds, share).
type Curve = Vec<(f64, f64)>;

fn failed(what: &str) -> impl Fn(String) -> String + '_ {
    move |error| format!("drawing {what}: {error}")
}

const SOCKETIO: RGBColor = RGBColor(0, 150, 0);
const PIPELINED: RGBColor = RGBColor(230, 140, 0);
const REDIS: RGBColor = RGBColor(130, 50, 180);

/// Every plot into `folder`.
pub(crate) fn draw(folder: &Path, figures: &Figures) -> Drawn {
    std::fs::create_dir_all(folder).map_err(|e| format!("creating {}: {e}", folder.display()))?;
    time_to_ready(&folder.join("time_to_ready.svg"), figures)
        .map_err(failed("the time-to-ready plot"))?;
    let t = &figures.throughput;
    let contenders: [(&str, &Both, RGBColor); 5] = [
        ("raw, naive", &t.naive, RED),
        ("raw, pipelined ceiling (no acks)", &t.pipelined, PIPELINED),
        ("readyws", &t.readyws, BLUE),
        ("readyws on Redis", &t.redis, REDIS),
        ("Socket.IO 4", &t.socketio, SOCKETIO),
    ];
    bars(
        &folder.join("throughput.svg"),
        &format!(
            "Acknowledged 1 KiB messages per second (runs of {}: median, min–max)",
            figures.messages
        ),
        "messages per second",
        &contenders,
        rates,
    )
    .map_err(failed("the throughput plot"))?;
    bars(
        &folder.join("cpu_per_message.svg"),
        "CPU per message, client + server (median, min–max of the runs)",
        "microseconds of CPU per message",
        &contenders,
        cpus,
    )
    .map_err(failed("the CPU plot"))?;
    storm(&folder.join("reconnect_storm.svg"), figures).map_err(failed("the storm plot"))?;
    Ok(())
}

/// The share of trials done by each time, one line per run and contender, on a logarithmic axis:
/// the contenders lie an order of magnitude apart.
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
    let r = &figures.ready;
    let series: [(&str, &Vec<Vec<Duration>>, RGBColor); 4] = [
        ("readyws: connect() → ready()", &r.readyws, BLUE),
        (
            "raw tokio-tungstenite: connect + one round trip",
            &r.raw,
            RED,
        ),
        ("readyws, server on Redis", &r.redis, REDIS),
        ("Socket.IO 4: io() → connect", &r.socketio, SOCKETIO),
    ];
    let lines: Vec<(&str, Vec<Curve>, RGBColor)> = series
        .iter()
        .map(|(label, runs, color)| (*label, runs.iter().map(|run| cdf(run)).collect(), *color))
        .collect();
    // The slowest percent of each run would stretch the axis over nothing.
    let points = || lines.iter().flat_map(|(_, runs, _)| runs.iter().flatten());
    let p99 = |run: &[(f64, f64)]| {
        run.iter()
            .find(|(_, share)| *share >= 0.99)
            .map_or(1.0, |(x, _)| *x)
    };
    let max_x = lines
        .iter()
        .flat_map(|(_, runs, _)| runs.iter().map(|run| p99(run)))
        .fold(1.0, f64::max)
        * 1.2;
    let min_x = points().map(|(x, _)| *x).fold(max_x, f64::min).max(1.0) * 0.8;
    let root = SVGBackend::new(path, (860, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Time to ready on 127.0.0.1 (cumulative share of trials, one line per run)",
            ("sans-serif", 19),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((min_x..max_x).log_scale(), 0f64..1f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("microseconds (logarithmic)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("share of trials")
        .draw()
        .map_err(|e| e.to_string())?;
    for (label, runs, color) in lines {
        for (i, run) in runs.into_iter().enumerate() {
            let drawn = chart
                .draw_series(LineSeries::new(run, color.stroke_width(1)))
                .map_err(|e| e.to_string())?;
            if i == 0 {
                drawn
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            }
        }
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

/// One group of bars per direction, one bar per contender: the median of the runs, with a
/// whisker from the lowest to the highest.
fn bars(
    path: &Path,
    caption: &str,
    y_desc: &str,
    contenders: &[(&str, &Both, RGBColor)],
    figure: fn(&[Sample]) -> Vec<f64>,
) -> Result<(), String> {
    let width = contenders.len() as f64 + 1.0;
    let mut drawn: Vec<(f64, Spread, RGBColor, usize)> = Vec::new();
    for (group, pick) in [
        (
            0usize,
            (|b: &Both| b.up.clone()) as fn(&Both) -> Vec<Sample>,
        ),
        (1, |b: &Both| b.down.clone()),
    ] {
        for (i, (_, both, color)) in contenders.iter().enumerate() {
            let x = group as f64 * width + i as f64 + 0.5;
            drawn.push((x, Spread::of(&figure(&pick(both))), *color, i));
        }
    }
    // Headroom above the tallest whisker for the legend.
    let max_y = drawn.iter().map(|(_, s, _, _)| s.max).fold(1e-9, f64::max) * 1.7;
    let root = SVGBackend::new(path, (860, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 19))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..2.0 * width, 0f64..max_y)
        .map_err(|e| e.to_string())?;
    let centre = contenders.len() as f64 / 2.0;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_label_formatter(&|y| {
            if max_y >= 100.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.1}")
            }
        })
        .y_desc(y_desc)
        .draw()
        .map_err(|e| e.to_string())?;
    for (group, label) in ["client → server", "server → client"]
        .into_iter()
        .enumerate()
    {
        let x = group as f64 * width + centre;
        // Just above the group's tallest whisker, below the legend.
        let top = drawn
            .iter()
            .skip(group * contenders.len())
            .take(contenders.len())
            .map(|(_, spread, _, _)| spread.max)
            .fold(0.0, f64::max);
        chart
            .draw_series(std::iter::once(Text::new(
                label,
                (x - 0.8, top * 1.1 + max_y * 0.04),
                ("sans-serif", 15),
            )))
            .map_err(|e| e.to_string())?;
    }
    for (i, (label, _, color)) in contenders.iter().enumerate() {
        let color = *color;
        chart
            .draw_series(drawn.iter().filter(|(_, _, _, index)| *index == i).map(
                |(x, spread, c, _)| {
                    Rectangle::new([(x - 0.4, 0.0), (x + 0.4, spread.median)], c.filled())
                },
            ))
            .map_err(|e| e.to_string())?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
        chart
            .draw_series(drawn.iter().filter(|(_, _, _, index)| *index == i).map(
                |(x, spread, _, _)| {
                    PathElement::new(
                        vec![
                            (x - 0.15, spread.min),
                            (x + 0.15, spread.min),
                            (*x, spread.min),
                            (*x, spread.max),
                            (x - 0.15, spread.max),
                            (x + 0.15, spread.max),
                        ],
                        BLACK.stroke_width(1),
                    )
                },
            ))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .margin(28)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Connection attempts over time after the restart began, one line per run and store.
fn storm(path: &Path, figures: &Figures) -> Result<(), String> {
    let m = &figures.many;
    let width = STORM_BUCKET_MS as f64 / 1000.0;
    let all = || m.storms.iter().chain(&m.storms_redis);
    let max_x = all()
        .map(|s| s.attempts.len() as f64 * width)
        .fold(1.0, f64::max);
    let max_y = all()
        .flat_map(|s| s.attempts.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.15;
    let root = SVGBackend::new(path, (860, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Reconnect storm: {} sessions, graceful server restart (one line per run)",
                figures.sessions
            ),
            ("sans-serif", 19),
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
    let steps = |storm: &Storm| -> Vec<(f64, f64)> {
        storm
            .attempts
            .iter()
            .enumerate()
            .flat_map(|(i, count)| {
                let x = i as f64 * width;
                [(x, *count as f64), (x + width, *count as f64)]
            })
            .collect()
    };
    for (label, storms, color) in [
        ("server in memory", &m.storms, BLUE),
        ("server on Redis", &m.storms_redis, REDIS),
    ] {
        for (i, storm) in storms.iter().enumerate() {
            let drawn = chart
                .draw_series(LineSeries::new(steps(storm), color.stroke_width(1)))
                .map_err(|e| e.to_string())?;
            if i == 0 {
                drawn
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            }
        }
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
