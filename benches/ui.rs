//! How long the app takes to show a mask-slider change (`cargo bench --bench ui`).
//!
//! Drives the real app headless with egui_kittest: opens the sample, waits for the run, then
//! moves the kernel slider back and forth and times the one frame (`Harness::step`) in which
//! the new iteration-0 mask must appear: the mask recomputed from the kept saliency map, its
//! textures re-uploaded, the layout redone, and the rerun of later iterations handed to a
//! worker. CPU time only (kittest renders no pixels); a 60 Hz display allows 16.7 ms.

use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use unveil::engine::params::{SaliencyParams, StopParams, UnveilParams};
use unveil::gui::settings::Settings;
use unveil::gui::{App, AppOptions};

fn main() {
    unveil::engine::memory::tune_allocator();
    let settings = Settings {
        params: UnveilParams {
            saliency: SaliencyParams {
                samples: 4,
                ..Default::default()
            },
            stop: StopParams {
                threshold: 0.0,
                max_iter: 3,
            },
            ..Default::default()
        },
        ..Default::default()
    };
    let mut h = Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .build_eframe(move |cc| {
            App::new(
                cc,
                AppOptions {
                    settings: Some(settings),
                    ..Default::default()
                },
            )
        });
    let start = Instant::now();
    while h.state().is_busy() || h.state().workspace.run.outcome().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "the first run never ended"
        );
        h.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    h.step();

    let mut frames = Vec::new();
    for i in 0..60 {
        let before = h.state().workspace.run.steps()[0].step.mask.clone();
        let kernel = if i % 2 == 0 { 31.0 } else { 11.0 };
        h.get_by_role_and_label(egui::accesskit::Role::Slider, "Kernel size")
            .set_value_accesskit(kernel);
        let t = Instant::now();
        h.step();
        frames.push(t.elapsed().as_secs_f64() * 1e3);
        let now = &h.state().workspace.run.steps()[0].step.mask;
        assert_ne!(
            *now, before,
            "the new mask is on screen in the frame of the change"
        );
        // Let the rerun of the later iterations start, as it would between two slider moves.
        std::thread::sleep(Duration::from_millis(30));
        h.step();
    }
    frames.sort_by(f64::total_cmp);
    let pct = |p: f64| frames[((frames.len() - 1) as f64 * p).round() as usize];
    println!(
        "mask-slider change to new mask on screen (one frame, {} changes): median {:.1} ms, p90 {:.1} ms, max {:.1} ms (60 Hz budget: 16.7 ms)",
        frames.len(),
        pct(0.5),
        pct(0.9),
        pct(1.0)
    );
}
