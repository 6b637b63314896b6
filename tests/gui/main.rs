//! The real app, driven through AccessKit with egui_kittest (no display or GPU needed).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "../support/corpus.rs"]
mod corpus;

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use unveil::engine::params::{SaliencyParams, StopParams, UnveilParams};
use unveil::gui::dialogs::Dialogs;
use unveil::gui::settings::Settings;
use unveil::gui::{App, AppOptions};
use unveil::install::Installer;

/// Dialogs that answer with whatever the test put in.
#[derive(Default)]
struct Scripted {
    next_image: Mutex<Option<PathBuf>>,
    next_model: Mutex<Option<PathBuf>>,
    next_folder: Mutex<Option<PathBuf>>,
}

impl Dialogs for Scripted {
    fn pick_image(&self) -> Option<PathBuf> {
        self.next_image.lock().unwrap().take()
    }
    fn pick_folder(&self) -> Option<PathBuf> {
        self.next_folder.lock().unwrap().take()
    }
    fn pick_model(&self) -> Option<PathBuf> {
        self.next_model.lock().unwrap().take()
    }
    fn save_png(&self, _: &str) -> Option<PathBuf> {
        None
    }
}

fn settings(samples: usize, chunk: usize, max_iter: usize) -> Settings {
    Settings {
        params: UnveilParams {
            saliency: SaliencyParams {
                samples,
                chunk: Some(chunk),
                ..Default::default()
            },
            stop: StopParams {
                threshold: 0.0,
                max_iter,
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

fn app(settings: Settings, dialogs: Arc<Scripted>) -> Harness<'static, App> {
    app_with(AppOptions {
        dialogs,
        settings: Some(settings),
        ..Default::default()
    })
}

fn app_with(options: AppOptions) -> Harness<'static, App> {
    Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .build_eframe(move |cc| App::new(cc, options))
}

/// Steps frames until `done` holds (background threads need real time), at most `secs`.
fn step_until(h: &mut Harness<'static, App>, secs: u64, what: &str, done: impl Fn(&App) -> bool) {
    let start = Instant::now();
    while !done(h.state()) {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for: {what}"
        );
        h.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    h.step();
}

fn idle(a: &App) -> bool {
    !a.is_busy() && a.workspace.run.outcome().is_some()
}

#[test]
fn first_start_loads_the_sample_and_runs_to_completion() {
    let mut h = app(settings(2, 8, 2), Arc::default());
    step_until(&mut h, 180, "the first run", idle);
    let a = h.state();
    assert_eq!(a.workspace.run.steps().len(), 2);
    assert!(a.workspace.image.loaded().unwrap().name.contains("chelsea"));
    assert!((281..=285).contains(&a.target().unwrap()), "a cat class");
    h.get_by_label_contains("Iteration 0 · p(target)");
    h.get_by_label_contains("Iteration 1 · p(target)");
    h.get_by_label_contains("Research use only");
    h.get_by_label_contains("Done: 2 iterations");
    assert_eq!(h.state().workspace.live_worker_threads(), 0);
}

#[test]
fn moving_the_kernel_slider_updates_the_first_mask_at_once_without_a_new_gradient() {
    let mut h = app(settings(2, 8, 2), Arc::default());
    step_until(&mut h, 180, "the first run", idle);
    let before = h.state().workspace.run.steps()[0].step.mask.clone();
    h.get_by_role_and_label(egui::accesskit::Role::Slider, "Kernel size")
        .set_value_accesskit(31.0);
    h.step();
    let a = h.state();
    assert_eq!(a.settings.params.mask.kernel, 31);
    let now = &a.workspace.run.steps()[0].step.mask;
    assert_ne!(*now, before, "iteration 0's mask changes in the same frame");
    assert!(
        now.count() > before.count(),
        "a larger kernel gives a larger mask"
    );
    step_until(&mut h, 180, "the rerun", idle);
    let a = h.state();
    assert!(
        a.workspace.run.steps()[0].step.cached,
        "iteration 0 reused its gradient"
    );
    assert_eq!(a.workspace.run.steps()[0].step.mask.count(), now_count(a));
    assert!(a.workspace.run.steps().iter().all(|s| !s.stale));
}

fn now_count(a: &App) -> usize {
    unveil::engine::mask::make_mask(
        &a.workspace.run.steps()[0].step.saliency,
        &a.settings.params.mask,
    )
    .count()
}

#[test]
fn cancel_stops_a_run_and_keeps_finished_iterations() {
    let mut h = app(settings(16, 2, 5), Arc::default());
    step_until(&mut h, 180, "iteration 1 to start", |a| {
        a.workspace.run.progress().is_some_and(|p| p.iteration >= 1)
    });
    h.get_by_label("Cancel").click();
    h.step();
    assert!(!h.state().workspace.run.is_running());
    step_until(&mut h, 300, "worker threads to finish", |a| {
        a.workspace.live_worker_threads() == 0
    });
    let a = h.state();
    assert!(
        !a.workspace.run.steps().is_empty() && a.workspace.run.steps().len() < 5,
        "kept {} iterations",
        a.workspace.run.steps().len()
    );
    assert!(a.workspace.run.steps().iter().all(|s| !s.stale));
    h.get_by_label_contains("Run cancelled");
}

#[test]
fn a_corrupt_file_shows_an_error_notice_and_keeps_the_current_image() {
    let dir = std::env::temp_dir().join(format!("unveil-gui-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("notes.png");
    std::fs::write(&bad, "this is not an image").unwrap();
    let dialogs = Arc::new(Scripted::default());
    let mut h = app(settings(1, 8, 1), dialogs.clone());
    step_until(&mut h, 180, "the first run", idle);
    *dialogs.next_image.lock().unwrap() = Some(bad);
    h.get_by_label("Open image…").click();
    step_until(&mut h, 300, "the error notice", |a| {
        !a.notices.items().is_empty()
    });
    h.get_by_label_contains("not a PNG, JPEG, TIFF or DICOM image");
    let a = h.state();
    assert!(
        a.workspace.image.loaded().unwrap().name.contains("chelsea"),
        "the sample stays open"
    );
    assert_eq!(a.workspace.run.steps().len(), 1, "results stay visible");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn arrow_keys_step_through_iterations() {
    let mut h = app(settings(1, 8, 3), Arc::default());
    step_until(&mut h, 180, "the first run", idle);
    assert_eq!(h.state().iterations.selected, 0);
    h.key_press(egui::Key::ArrowRight);
    h.step();
    h.key_press(egui::Key::ArrowRight);
    h.step();
    assert_eq!(h.state().iterations.selected, 2);
    h.key_press(egui::Key::ArrowLeft);
    h.step();
    assert_eq!(h.state().iterations.selected, 1);
}

/// The display window is a viewer's control: moving it never reruns. What the model sees
/// changes only on purpose, and then it reruns; summary.json records both.
#[test]
fn a_dicom_xray_opens_with_its_window_and_only_the_model_window_reruns() {
    let dialogs = Arc::new(Scripted::default());
    let mut h = app(settings(1, 8, 1), dialogs.clone());
    step_until(&mut h, 180, "the first run", idle);
    let dcm =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dicom/mono2_16bit.dcm");
    *dialogs.next_image.lock().unwrap() = Some(dcm);
    h.get_by_label("Open image…").click();
    step_until(&mut h, 180, "the DICOM run", |a| {
        idle(a)
            && a.workspace
                .image
                .loaded()
                .is_some_and(|i| i.name.ends_with(".dcm"))
    });
    let file = unveil::engine::source_image::Window {
        center: 2126.5,
        width: 6001.0,
    };
    let a = h.state();
    assert_eq!(a.workspace.image.window(), Some(file), "the file's window");
    assert_eq!(a.workspace.image.model_window(), Some(file));
    h.get_by_label_contains("Window / level");
    let runs = h.state().workspace.run.started();
    h.get_by_role_and_label(egui::accesskit::Role::Slider, "Window (width)")
        .set_value_accesskit(1000.0);
    for _ in 0..5 {
        h.step();
    }
    let a = h.state();
    assert_eq!(a.workspace.image.window().unwrap().width, 1000.0);
    assert_eq!(
        a.workspace.image.model_window(),
        Some(file),
        "the model's window is unchanged"
    );
    assert_eq!(a.workspace.run.started(), runs, "no rerun for the display");
    assert!(!a.is_busy());
    // An export records both windows: the model's and the one on screen.
    let out = std::env::temp_dir().join(format!("unveil-app-windows-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    *dialogs.next_folder.lock().unwrap() = Some(out.clone());
    h.get_by_label("Export run…").click();
    step_until(&mut h, 60, "the export", |a| {
        !a.is_busy()
            && a.notices
                .items()
                .iter()
                .any(|n| n.text.contains("Exported"))
    });
    let s = unveil::engine::summary::Summary::read(&out.join("summary.json")).unwrap();
    let w = s
        .record
        .window
        .expect("a grayscale image records its windows");
    assert_eq!((w.model_input, w.display.width), (file, 1000.0));
    let _ = std::fs::remove_dir_all(&out);
    h.get_by_label("Model: use display window").click();
    h.step();
    assert_eq!(
        h.state().workspace.image.model_window().unwrap().width,
        1000.0
    );
    step_until(&mut h, 180, "the rerun", idle);
    assert!(
        h.state().workspace.run.started() > runs,
        "the model sees the chosen window"
    );
    h.get_by_label("Reset display").click();
    h.step();
    assert_eq!(h.state().workspace.image.window().unwrap().width, 6001.0);
    h.get_by_label("Model: file's window").click();
    h.step();
    assert_eq!(h.state().workspace.image.model_window(), Some(file));
}

#[test]
fn every_bad_input_shows_a_notice_and_never_crashes_the_app() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("unveil-gui-corpus-{}", std::process::id()));
    let dialogs = Arc::new(Scripted::default());
    let mut h = app(settings(1, 8, 1), dialogs.clone());
    step_until(&mut h, 180, "the first run", idle);
    for case in corpus::images(&dir.join("images"), &repo) {
        let name = case
            .path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        *dialogs.next_image.lock().unwrap() = Some(case.path.clone());
        h.get_by_label("Open image…").click();
        match case.expect {
            corpus::Expect::Loads => {
                step_until(&mut h, 300, &name, |a| {
                    dialogs.next_image.lock().unwrap().is_none()
                        && idle(a)
                        && a.workspace.image.loaded().is_some_and(|i| i.name == name)
                });
                assert!(!h.state().workspace.run.steps().is_empty(), "{name} runs");
            }
            corpus::Expect::Fails(msg) => {
                // This file's own notice: its dialog answered, nothing in flight, and the newest
                // notice matches (an older notice with the same words must not count, or the
                // next file's path could be picked up by this file's dialog thread).
                step_until(&mut h, 300, &name, |a| {
                    dialogs.next_image.lock().unwrap().is_none()
                        && !a.is_busy()
                        && a.notices
                            .items()
                            .last()
                            .is_some_and(|n| n.text.contains(msg))
                });
                assert!(
                    h.query_all_by_label_contains(msg).count() >= 1,
                    "{name}: the notice is on screen"
                );
                assert!(
                    h.state().workspace.image.loaded().is_some(),
                    "{name}: the previous image stays open"
                );
            }
        }
    }
    for case in corpus::weights(&dir.join("weights"), &repo) {
        let corpus::Expect::Fails(msg) = case.expect else {
            continue;
        };
        let desc = dir.join("model.json");
        let json = serde_json::json!({ "name": "bad", "arch": "resnet18", "weights": case.path });
        std::fs::write(&desc, json.to_string()).unwrap();
        *dialogs.next_model.lock().unwrap() = Some(desc);
        h.get_by_label("Open model…").click();
        // This file's own notice, as for the images: its dialog answered and its load done
        // before the newest notice counts. Two files fail with the same words ("refused"), so
        // an older notice would let the next case rewrite model.json and the dialog's answer
        // while this one is still loading (seen as a 300 s time-out about one run in three).
        step_until(&mut h, 300, msg, |a| {
            dialogs.next_model.lock().unwrap().is_none()
                && !a.is_busy()
                && a.notices
                    .items()
                    .last()
                    .is_some_and(|n| n.text.contains("Cannot load model") && n.text.contains(msg))
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn five_hundred_quick_slider_moves_end_with_the_last_setting_and_no_threads_left() {
    use unveil::engine::explainer::Explainer;
    let mut h = app(settings(1, 8, 3), Arc::default());
    step_until(&mut h, 180, "the first run", idle);
    let slider = |h: &mut Harness<'static, App>, k: f64| {
        h.get_by_role_and_label(egui::accesskit::Role::Slider, "Kernel size")
            .set_value_accesskit(k);
        h.step();
    };
    for i in 0..500 {
        slider(&mut h, (3 + 2 * (i % 40)) as f64);
    }
    slider(&mut h, 37.0);
    step_until(&mut h, 300, "the last run", |a| {
        idle(a) && a.workspace.live_worker_threads() == 0
    });
    let a = h.state();
    assert_eq!(a.settings.params.mask.kernel, 37);
    assert!(
        a.workspace.run.started() > 10,
        "runs were started and cancelled: {}",
        a.workspace.run.started()
    );
    assert!(a.workspace.run.steps().iter().all(|s| !s.stale));
    // The same settings computed directly, from scratch.
    let model = a.workspace.model.explainer().unwrap().model().clone();
    let img = a.workspace.image.loaded().unwrap().source.clone();
    let x = unveil::engine::image::to_model_input(&img, model.info(), &candle_core::Device::Cpu)
        .unwrap();
    let want = Explainer::new(model)
        .explain_input(
            &x,
            &a.settings.params,
            &mut |_| {},
            &std::sync::atomic::AtomicBool::new(false),
        )
        .unwrap();
    assert_eq!(a.workspace.run.steps().len(), want.steps.len());
    for (got, want) in a.workspace.run.steps().iter().zip(&want.steps) {
        assert_eq!(
            got.step.cumulative, want.cumulative,
            "iteration {}",
            want.index
        );
    }
}

/// A run thread that dies without reporting (a bug of ours that panics) ends the run with an
/// error instead of leaving the app busy forever.
#[test]
fn a_run_thread_that_panics_ends_the_run_with_an_error() {
    use unveil::engine::explainer::Explainer;
    use unveil::engine::models::{Classifier, ModelInfo};
    use unveil::engine::ops::activation::ReluMode;
    use unveil::gui::worker::{Msg, Subject, Worker};

    struct Panics(Arc<dyn Classifier>);
    impl Classifier for Panics {
        fn info(&self) -> &ModelInfo {
            self.0.info()
        }
        fn device(&self) -> &candle_core::Device {
            self.0.device()
        }
        fn forward(
            &self,
            _: &candle_core::Tensor,
            _: ReluMode,
        ) -> unveil::Result<candle_core::Tensor> {
            panic!("deliberate panic in a test model")
        }
    }
    let lite = unveil::engine::models::load(
        unveil::engine::models::DEFAULT_MODEL,
        &candle_core::Device::Cpu,
        Default::default(),
    )
    .unwrap();
    let img = unveil::engine::image::load(&PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/assets/coffee.png"
    )))
    .unwrap();
    let mut worker = Worker::default();
    worker.start_run(
        &egui::Context::default(),
        Arc::new(Explainer::new(Arc::new(Panics(lite)))),
        Subject {
            image: Arc::new(img),
            path: None,
            name: "coffee.png".into(),
            window: None,
        },
        UnveilParams::default(),
    );
    let start = Instant::now();
    let done = loop {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the run never ended"
        );
        if let Some(Msg::Done(r)) = worker
            .poll()
            .into_iter()
            .find(|m| matches!(m, Msg::Done(_)))
        {
            break r;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let err = done.map(|_| ()).expect_err("a panicking run fails");
    assert!(err.to_string().contains("internal error"), "{err}");
    assert!(!worker.is_running());
}

/// With no display the app cannot open its window: one line saying so and exit status 1
/// (it used to be reported as "invalid parameter").
#[test]
fn without_a_display_the_app_says_it_cannot_open_a_window() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_unveil"))
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("WAYLAND_SOCKET")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            panic!("the app neither opened a window nor gave up");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("unveil: cannot open a window:") && !err.contains("invalid parameter"),
        "{err}"
    );
}

/// One click runs the sanity checks in the background; the verdict says in words what the
/// numbers show (the paper's guided maps barely change with a random classifier head).
#[test]
fn the_sanity_check_runs_from_one_click_and_shows_its_verdict() {
    let mut s = settings(2, 8, 1);
    s.params.saliency.method = unveil::engine::params::Method::Guided;
    let mut h = app(s, Arc::default());
    step_until(&mut h, 180, "the first run", idle);
    h.get_by_label("Sanity check").click();
    step_until(&mut h, 300, "the sanity check", |a| {
        !a.workspace.check.is_running() && a.workspace.check.result().is_some()
    });
    let a = h.state();
    let report = &a.workspace.check.result().unwrap().check.report;
    assert_eq!(report.randomisation.len(), 3);
    assert!(
        report.randomisation[0].spearman.unwrap() > 0.9,
        "guided: {report:?}"
    );
    assert!(a.workspace.check_is_current(&a.settings.params));
    h.get_by_label_contains("Sanity check (guided)");
    h.get_by_label_contains("barely changes when the classifier head is randomised");
    // Iteration 0's saliency column carries the number.
    h.get_by_label_contains("random-head ρ");
}

/// The method picker and the one-click settings change what the next run computes.
#[test]
fn picking_a_method_reruns_with_it() {
    use unveil::engine::params::Method;
    let mut h = app(settings(1, 8, 1), Arc::default());
    step_until(&mut h, 180, "the first run", idle);
    assert_eq!(h.state().settings.params.saliency.method, Method::Vanilla);
    h.get_by_role_and_label(egui::accesskit::Role::ComboBox, "Method")
        .click();
    h.step();
    h.step();
    h.get_by_label("Grad-CAM").click();
    h.step();
    assert_eq!(h.state().settings.params.saliency.method, Method::GradCam);
    step_until(&mut h, 180, "the Grad-CAM run", idle);
    let a = h.state();
    assert_eq!(
        a.workspace.run.steps()[0].step.attribution.dims()[0],
        1,
        "a Grad-CAM map has one channel"
    );
    h.get_by_label("Advanced").click();
    h.step();
    h.get_by_label("The paper's settings").click();
    h.step();
    assert_eq!(h.state().settings.params.saliency.method, Method::Guided);
    assert_eq!(h.state().settings.params.saliency.samples, 16);
}

/// A TorchXRayVision weights file opened as the model: the class picker lists every finding with
/// its probability, the iterations view says which one is explained, and picking another reruns.
#[test]
fn a_multi_label_xray_model_lists_its_findings_and_switching_one_reruns() {
    let fixture = |f: &str| {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/xray/")).join(f)
    };
    let mut h = app_with(AppOptions {
        dialogs: Arc::new(Scripted::default()),
        settings: Some(settings(1, 8, 1)),
        model: Some(fixture("xrv_densenet_opthreshs.pt").display().to_string()),
        image: Some(fixture("xray_8bit.png")),
        ..Default::default()
    });
    step_until(&mut h, 180, "the first run", idle);
    let first = h.state().target().unwrap();
    let info = h
        .state()
        .workspace
        .model
        .explainer()
        .unwrap()
        .info()
        .clone();
    assert!(info.multi_label && info.labels.len() == 18);
    h.get_by_label_contains(&format!("Explaining {}", info.label(first)));
    h.get_by_role_and_label(egui::accesskit::Role::ComboBox, "Class")
        .click();
    h.step();
    h.step();
    // Every finding is offered (the "all" weights predict all 18), each with its bar.
    for l in &info.labels {
        h.get_by_label(l);
    }
    let other = (0..18).find(|&c| c != first).unwrap();
    h.get_by_label(&info.labels[other]).click();
    h.step();
    assert_eq!(h.state().workspace.run.target(), Some(other));
    step_until(&mut h, 180, "the rerun", |a| {
        idle(a) && a.workspace.run.outcome().is_some_and(|o| o.target == other)
    });
    h.get_by_label_contains(&format!("Explaining {}", info.labels[other]));
}

/// Clicking a picture opens it enlarged (the row's click area used to take the click), and the
/// arrow keys move the enlarged view through the iterations.
#[test]
fn clicking_a_picture_opens_it_enlarged_and_arrows_step_it() {
    let mut h = app(settings(1, 8, 2), Arc::default());
    step_until(&mut h, 180, "the first run", idle);
    h.get_by_label("Saliency of iteration 0").click();
    h.step();
    assert_eq!(h.state().iterations.enlarged, Some((0, 1)));
    h.step();
    h.get_by_label_contains("Saliency · iteration 0");
    h.key_press(egui::Key::ArrowRight);
    h.step();
    h.step();
    assert_eq!(h.state().iterations.enlarged, Some((1, 1)));
    h.get_by_label_contains("Saliency · iteration 1");
    h.key_press(egui::Key::Escape);
    h.step();
    assert_eq!(h.state().iterations.enlarged, None);
}

/// A finished, untouched app asks for no more frames: it costs nothing while idle.
#[test]
fn an_idle_app_requests_no_repaint() {
    let mut h = app(settings(1, 8, 2), Arc::default());
    step_until(&mut h, 180, "the first run", idle);
    // Select a row (it scrolls into view once), then let everything settle.
    h.key_press(egui::Key::ArrowRight);
    for _ in 0..10 {
        h.step();
    }
    assert!(
        !h.ctx.has_requested_repaint(),
        "idle, yet a repaint was requested: {:?}",
        h.ctx.repaint_causes()
    );
}

/// A model that fails to load says why, and the app then rests: no spinner left spinning.
#[test]
fn after_a_failed_model_load_the_app_says_so_and_rests() {
    let mut h = app_with(AppOptions {
        dialogs: Arc::new(Scripted::default()),
        settings: Some(settings(1, 8, 1)),
        model: Some("/nonexistent/weights.pth".into()),
        ..Default::default()
    });
    step_until(&mut h, 60, "the failed load", |a| {
        !a.workspace.model.is_loading()
            && a.workspace.image.loaded().is_some()
            && a.notices
                .items()
                .iter()
                .any(|n| n.text.contains("Cannot load model"))
    });
    h.get_by_label_contains("No model: choose one under Model");
    for _ in 0..10 {
        h.step();
    }
    assert!(
        !h.ctx.has_requested_repaint(),
        "idle, yet a repaint was requested: {:?}",
        h.ctx.repaint_causes()
    );
}

/// A grayscale X-ray with the ImageNet model (or a photo with the X-ray model) is called out,
/// with the fitting model offered.
#[test]
fn an_xray_with_the_imagenet_model_shows_a_mismatch_warning() {
    let mut h = app(settings(1, 8, 1), Arc::default());
    step_until(&mut h, 180, "the first run", idle);
    assert!(
        h.query_by_label_contains("This is a grayscale image")
            .is_none()
    );
    h.get_by_label("Samples").click();
    h.step();
    h.step();
    h.get_by_label("chest-xray-pneumonia.jpeg").click();
    step_until(&mut h, 180, "the X-ray run", |a| {
        idle(a)
            && a.workspace
                .image
                .loaded()
                .is_some_and(|i| i.name.starts_with("chest-xray"))
    });
    h.get_by_label_contains("This is a grayscale image (an X-ray?), but efficientnet-lite0");
    assert!(
        h.query_by_label("Use pneumonia-xception").is_some()
            || h.query_by_label("Fetch pneumonia-xception (about 85 MB from PyPI)")
                .is_some()
    );
}

/// An installer with an empty model folder and `python` as its Python: given to the app, not
/// set in the environment, which every test of this process shares.
fn installer_without_models(what: &str, python: &str) -> Installer {
    let dir = std::env::temp_dir().join(format!("unveil-gui-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Installer {
        models_dir: dir,
        python: python.into(),
    }
}

/// The app with `installer`, the chest X-ray sample open with the default (photo) model.
fn xray_with(installer: Installer) -> Harness<'static, App> {
    let mut h = app_with(AppOptions {
        dialogs: Arc::new(Scripted::default()),
        settings: Some(settings(1, 8, 1)),
        installer,
        ..Default::default()
    });
    step_until(&mut h, 180, "the first run", idle);
    h.get_by_label("Samples").click();
    h.step();
    h.step();
    h.get_by_label("chest-xray-pneumonia.jpeg").click();
    step_until(&mut h, 180, "the X-ray run", |a| {
        idle(a) && a.workspace.image.name().starts_with("chest-xray")
    });
    h
}

const FETCH: &str = "Fetch pneumonia-xception (about 85 MB from PyPI)";

/// Regression (issue 23, 6b): the mismatch warning told a clinician to run `unveil models
/// fetch` in a terminal. It offers the fetch in the app; without Python the fetch ends at once
/// in an error that says so, and the app goes on as it was (no repaints once idle).
#[test]
fn an_xray_offers_its_model_for_fetching_and_a_missing_python_is_named() {
    let installer = installer_without_models("fetch-no-python", "/nonexistent/python3");
    let dir = installer.models_dir.clone();
    let mut h = xray_with(installer);
    h.get_by_label_contains("This is a grayscale image (an X-ray?), but efficientnet-lite0");
    assert!(h.query_by_label("Use pneumonia-xception").is_none());
    assert!(h.query_by_label_contains("unveil models fetch").is_none());
    h.get_by_label(FETCH).click();
    step_until(&mut h, 30, "the fetch to fail", |a| {
        !a.is_busy() && !a.notices.items().is_empty()
    });
    let a = h.state();
    let n = a.notices.items().last().unwrap();
    assert_eq!(n.level, unveil::gui::notices::Level::Error);
    assert_eq!(
        n.text,
        "Cannot fetch pneumonia-xception: Python 3 was not found (tried /nonexistent/python3): \
         install Python 3.10+ with venv, or set UNVEIL_PYTHON"
    );
    h.get_by_label_contains("Python 3 was not found");
    assert_eq!(
        a.settings.model, "efficientnet-lite0",
        "still the model it had"
    );
    assert!(!a.workspace.run.steps().is_empty(), "the results stay");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing installed"
    );
    // The model picker offers the fetch too, and tries again.
    let first = n.id;
    h.get_by_role_and_label(egui::accesskit::Role::ComboBox, "Model")
        .click();
    h.step();
    h.step();
    h.get_by_label_contains("(not installed: choosing it fetches it, about 85 MB from PyPI)")
        .click();
    step_until(&mut h, 30, "the second try to fail", |a| {
        !a.is_busy()
            && a.notices
                .items()
                .last()
                .is_some_and(|n| n.id != first && n.text.contains("Python 3 was not found"))
    });
    // Still usable: the button is there again, and a change reruns.
    h.get_by_label(FETCH);
    assert_eq!(h.state().workspace.live_worker_threads(), 0);
    for _ in 0..10 {
        h.step();
    }
    assert!(
        !h.ctx.has_requested_repaint(),
        "idle after a failed fetch, yet a repaint was requested: {:?}",
        h.ctx.repaint_causes()
    );
    let runs = h.state().workspace.run.started();
    h.get_by_role_and_label(egui::accesskit::Role::Slider, "Smoothing passes")
        .set_value_accesskit(2.0);
    h.step();
    step_until(&mut h, 180, "the rerun", idle);
    assert!(h.state().workspace.run.started() > runs);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fetch that ends well switches to the model and says so. (A stand-in Python does each
/// installer step offline; the model then loads from the registry's own folder, which this
/// test does not choose, so only the switch is checked here.)
#[cfg(unix)]
#[test]
fn a_fetch_from_the_app_that_ends_well_switches_to_the_model() {
    use std::os::unix::fs::PermissionsExt;
    let scripts = std::env::temp_dir().join(format!("unveil-gui-fakepy-{}", std::process::id()));
    std::fs::create_dir_all(&scripts).unwrap();
    let python = scripts.join("python3");
    std::fs::write(
        &python,
        r#"#!/bin/sh
case "$1" in
  -c) case "$2" in *zipfile*) : > "$4" ;; esac ;;
  -m) case "$2" in venv) mkdir -p "$3/bin" && cp "$0" "$3/bin/python" ;; esac ;;
  *) printf converted > "$5" ;;
esac
"#,
    )
    .unwrap();
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    let installer = installer_without_models("fetch-ok", python.to_str().unwrap());
    let dir = installer.models_dir.clone();
    let mut h = xray_with(installer);
    h.get_by_label(FETCH).click();
    step_until(&mut h, 30, "the fetch to end", |a| {
        !a.workspace.fetch.is_running() && a.settings.model == "pneumonia-xception"
    });
    h.get_by_label_contains("Fetched pneumonia-xception; it is the model now.");
    let installed = dir.join("pneumonia-xception.safetensors");
    assert_eq!(std::fs::read_to_string(installed).unwrap(), "converted");
    assert!(
        !h.state()
            .workspace
            .fetch
            .installer()
            .needs_fetch("pneumonia-xception")
    );
    // Nothing of the fetch's work is left beside the weights and the environment.
    let mut left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, [".venv-fetch", "pneumonia-xception.safetensors"]);
    drop(h);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&scripts);
}

/// Cancel stops a fetch at once: the installer's Python (here one that would take a minute)
/// is killed, nothing is installed or left half-made, and the app is as it was.
#[cfg(unix)]
#[test]
fn a_fetch_from_the_app_can_be_cancelled() {
    use std::os::unix::fs::PermissionsExt;
    let scripts = std::env::temp_dir().join(format!("unveil-gui-slowpy-{}", std::process::id()));
    std::fs::create_dir_all(&scripts).unwrap();
    let python = scripts.join("python3");
    std::fs::write(&python, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    let installer = installer_without_models("fetch-cancel", python.to_str().unwrap());
    let dir = installer.models_dir.clone();
    let mut h = xray_with(installer);
    h.get_by_label(FETCH).click();
    step_until(&mut h, 10, "the fetch to start", |a| {
        a.workspace.fetch.fetching() == Some("pneumonia-xception")
    });
    h.get_by_label_contains("Fetching pneumonia-xception: progress and Cancel at the bottom");
    assert!(h.state().is_busy());
    h.get_by_label("Cancel fetch").click();
    h.step();
    let a = h.state();
    assert!(!a.workspace.fetch.is_running());
    assert!(
        a.notices
            .items()
            .iter()
            .any(|n| n.text == "Fetch cancelled; nothing was installed.")
    );
    let asked = Instant::now();
    step_until(&mut h, 10, "the fetch thread to end", |a| {
        a.workspace.live_worker_threads() == 0
    });
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing left");
    assert_eq!(h.state().settings.model, "efficientnet-lite0");
    h.get_by_label(FETCH);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&scripts);
}

/// A pinned run stays next to the rerun with other settings, row by row.
#[test]
fn a_pinned_run_is_shown_next_to_the_new_one() {
    let mut h = app(settings(1, 8, 2), Arc::default());
    step_until(&mut h, 180, "the first run", idle);
    let first_p = h.state().workspace.run.steps()[0].step.p_target;
    h.get_by_label("Pin this run").click();
    h.step();
    assert!(h.state().workspace.run.pinned().is_some());
    h.get_by_role_and_label(egui::accesskit::Role::Slider, "Kernel size")
        .set_value_accesskit(31.0);
    h.step();
    step_until(&mut h, 180, "the rerun", idle);
    let a = h.state();
    assert_eq!(a.settings.params.mask.kernel, 31);
    assert_eq!(a.workspace.run.pinned().unwrap().steps.len(), 2);
    h.get_by_label_contains("Pinned: vanilla, kernel 11");
    h.get_by_label(&format!("Pinned saliency · p {first_p:.3}"));
    h.get_by_label("Unpin").click();
    h.step();
    assert!(h.state().workspace.run.pinned().is_none());
}

/// Presenter mode hides the side panel and shows one iteration large; F11 toggles it.
#[test]
fn presenter_mode_hides_the_side_panel() {
    let mut h = app(settings(1, 8, 2), Arc::default());
    step_until(&mut h, 180, "the first run", idle);
    let panel = |h: &Harness<'static, App>| {
        h.query_by_role_and_label(egui::accesskit::Role::Slider, "Kernel size")
            .is_some()
    };
    assert!(panel(&h));
    h.get_by_label("Presenter").click();
    h.step();
    h.step();
    assert!(h.state().presenter.on);
    assert!(!panel(&h), "the side panel is hidden");
    h.get_by_label_contains("· p = ");
    h.key_press(egui::Key::F11);
    h.step();
    h.step();
    assert!(!h.state().presenter.on);
    assert!(panel(&h));
}

/// In presenter mode the iterations step by themselves (the app asks for the frame of the next
/// one) until Space pauses them.
#[test]
fn presenter_mode_steps_by_itself_until_space_pauses_it() {
    let mut h = app_with(AppOptions {
        dialogs: Arc::new(Scripted::default()),
        settings: Some(settings(1, 8, 2)),
        presenter: true,
        ..Default::default()
    });
    step_until(&mut h, 180, "the first run", idle);
    assert!(h.state().presenter.on && h.state().presenter.playing);
    let start = h.state().iterations.selected;
    step_until(&mut h, 10, "the next iteration", |a| {
        a.iterations.selected != start
    });
    h.key_press(egui::Key::Space);
    h.step();
    h.step();
    assert!(!h.state().presenter.playing);
    h.get_by_label_contains("paused: Space plays");
    h.key_press(egui::Key::Escape);
    h.step();
    assert!(!h.state().presenter.on);
}

/// Dismissing a notice is an action like any other: that notice goes, the app stays as it was.
#[test]
fn dismissing_a_notice_removes_it() {
    let dir = std::env::temp_dir().join(format!("unveil-gui-dismiss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("notes.png");
    std::fs::write(&bad, "this is not an image").unwrap();
    let dialogs = Arc::new(Scripted::default());
    let mut h = app(settings(1, 8, 1), dialogs.clone());
    step_until(&mut h, 180, "the first run", idle);
    *dialogs.next_image.lock().unwrap() = Some(bad);
    h.get_by_label("Open image…").click();
    step_until(&mut h, 60, "the error notice", |a| {
        !a.notices.items().is_empty()
    });
    h.get_by_label_contains("not a PNG, JPEG, TIFF or DICOM image");
    h.get_by_label("Dismiss").click();
    h.step();
    h.step();
    assert!(h.state().notices.items().is_empty());
    assert!(
        h.query_by_label_contains("not a PNG, JPEG, TIFF or DICOM image")
            .is_none()
    );
    assert_eq!(h.state().workspace.run.steps().len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without a desktop file-dialog portal the dialog answers "nothing" at once: the app says so
/// and offers a path field instead of doing nothing.
#[test]
fn without_a_file_dialog_the_app_offers_a_path_field() {
    let mut h = app(settings(1, 8, 1), Arc::default());
    step_until(&mut h, 180, "the first run", idle);
    h.get_by_label("Open image…").click();
    h.step();
    step_until(&mut h, 10, "the dialog's answer", |a| !a.is_busy());
    h.step();
    h.get_by_label_contains("No file dialog could be opened");
    let coffee = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/coffee.png");
    h.get_by_role(egui::accesskit::Role::TextInput)
        .type_text(coffee);
    h.step();
    h.get_by_label("Open").click();
    step_until(&mut h, 180, "the typed image", |a| {
        idle(a)
            && a.workspace
                .image
                .loaded()
                .is_some_and(|i| i.name == "coffee.png")
    });
}

/// Exported summary.json from the app: the run's time, the file's full path and hash.
#[test]
fn the_apps_summary_records_the_time_the_path_and_the_hash() {
    let dialogs = Arc::new(Scripted::default());
    let mut h = app(settings(1, 8, 1), dialogs.clone());
    step_until(&mut h, 180, "the first run", idle);
    let coffee = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/coffee.png");
    *dialogs.next_image.lock().unwrap() = Some(coffee.clone());
    h.get_by_label("Open image…").click();
    step_until(&mut h, 180, "the coffee run", |a| {
        idle(a)
            && a.workspace
                .image
                .loaded()
                .is_some_and(|i| i.name == "coffee.png")
    });
    let out = std::env::temp_dir().join(format!("unveil-app-export-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    *dialogs.next_folder.lock().unwrap() = Some(out.clone());
    h.get_by_label("Export run…").click();
    step_until(&mut h, 60, "the export", |a| {
        !a.is_busy()
            && a.notices
                .items()
                .iter()
                .any(|n| n.text.contains("Exported"))
    });
    let s = unveil::engine::summary::Summary::read(&out.join("summary.json")).unwrap();
    assert!(s.total_ms > 0.0, "{}", s.total_ms);
    assert_eq!(s.image, coffee.display().to_string());
    assert_eq!(
        s.record.image_path.as_deref(),
        Some(coffee.display().to_string().as_str())
    );
    assert_eq!(s.record.image_sha256.as_ref().map(String::len), Some(64));
    assert!(s.readout.is_some());
    // The same record the command line writes: the engine's run of the same file with the
    // same settings gives the same summary, timings aside.
    let explainer = unveil::engine::explainer::Explainer::load(
        &unveil::engine::models::ModelSource::Named(unveil::engine::models::DEFAULT_MODEL.into()),
        unveil::engine::device::DeviceChoice::Cpu,
    )
    .unwrap();
    let img = unveil::engine::image::load(&coffee).unwrap();
    let name = coffee.display().to_string();
    let req = unveil::engine::run::RunRequest::file(&img, &coffee, &name, &s.params);
    let cli = explainer
        .run(
            &req,
            &mut |_| {},
            &std::sync::atomic::AtomicBool::new(false),
        )
        .unwrap();
    let cli = unveil::engine::summary::Summary::new(&cli);
    assert_eq!(
        (&cli.image, &cli.record, &cli.model),
        (&s.image, &s.record, &s.model)
    );
    assert_eq!((cli.target, &cli.target_label), (s.target, &s.target_label));
    assert_eq!(cli.stop, s.stop);
    assert_eq!(cli.iterations.len(), s.iterations.len());
    for (c, a) in cli.iterations.iter().zip(&s.iterations) {
        assert_eq!((c.p_target, &c.top5), (a.p_target, &a.top5));
        assert_eq!(c.mask_coverage, a.mask_coverage);
    }
    // Parameters read as typed: f32 values written as f32 ("0.05"), not widened to f64
    // ("0.05000000074505806").
    let text = std::fs::read_to_string(out.join("summary.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let params = json["params"].to_string();
    assert!(
        params.contains("\"keep\":0.05") && !params.contains("0000000"),
        "{params}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// At 1024 x 768 with text at 200 % the side panel starts hidden and the plots fold away, so the
/// rows stay on screen; Controls brings the panel back.
#[test]
fn a_small_window_with_large_text_keeps_the_rows_in_view() {
    let mut h = Harness::builder()
        .with_size(egui::vec2(1024.0, 768.0))
        .build_eframe(|cc| {
            App::new(
                cc,
                AppOptions {
                    dialogs: Arc::new(Scripted::default()),
                    settings: Some(settings(1, 8, 2)),
                    font_scale: Some(2.0),
                    ..Default::default()
                },
            )
        });
    step_until(&mut h, 180, "the first run", idle);
    for _ in 0..3 {
        h.step();
    }
    let slider = |h: &Harness<'static, App>| {
        h.query_by_role_and_label(egui::accesskit::Role::Slider, "Kernel size")
            .is_some()
    };
    assert!(!slider(&h), "the side panel starts hidden");
    let row = h.get_by_label("Saliency of iteration 0");
    let bottom = row.rect().bottom();
    // Accessibility rectangles are in physical pixels: the whole picture is on the screen.
    assert!(bottom < 768.0, "iteration 0 is on screen (bottom {bottom})");
    h.get_by_label("Controls").click();
    h.step();
    h.step();
    assert!(slider(&h));
}

/// The device menu lists every GPU kind, greys out the ones this machine cannot use and says
/// why on hover (in a CPU build: not compiled in), and the CPU stays choosable.
#[test]
fn the_device_menu_says_why_a_gpu_cannot_be_used() {
    use egui_kittest::kittest::NodeT;
    use unveil::engine::device::{self, DeviceChoice};
    let mut h = app(settings(1, 8, 1), Arc::default());
    step_until(&mut h, 180, "the first run", idle);
    h.get_by_role_and_label(egui::accesskit::Role::ComboBox, "Device (cpu)")
        .click();
    h.step();
    h.step();
    let options = device::probe().options();
    for o in &options {
        let entry = h.get_by_label(o.choice.label());
        assert_eq!(
            entry.accesskit_node().is_disabled(),
            !o.usable,
            "{:?}",
            o.choice
        );
    }
    let unusable = options
        .iter()
        .find(|o| o.choice == DeviceChoice::Cuda && !o.usable)
        .expect("no CUDA device in the test environment");
    h.get_by_label(unusable.choice.label()).hover();
    // Tooltips wait for the pointer to rest.
    let start = Instant::now();
    while h.query_by_label_contains(&unusable.detail).is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no hover text {:?}",
            unusable.detail
        );
        h.step();
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An ONNX vision transformer opened as the model: the app says what it assumed (with
/// Change…), what guided backpropagation means on GELU and softmax, and lists Grad-CAM's
/// layers; picking another layer reloads the model and reruns with it.
#[test]
fn an_onnx_transformer_says_what_it_assumed_and_grad_cam_layers_can_be_picked() {
    use unveil::engine::params::Method;
    let vit = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx/vit_b_16.onnx");
    let mut s = settings(1, 8, 1);
    s.params.saliency.method = Method::GradCam;
    let mut h = app_with(AppOptions {
        dialogs: Arc::new(Scripted::default()),
        settings: Some(s),
        model: Some(vit.display().to_string()),
        ..Default::default()
    });
    step_until(&mut h, 180, "the first run", idle);
    // The graph's input is 224 x 224 (not assumed); the rest ONNX does not carry.
    h.get_by_label_contains("Assumed: ImageNet labels, ImageNet mean/std, bilinear");
    h.get_by_label("Change…");
    let layers = h
        .state()
        .workspace
        .model
        .explainer()
        .unwrap()
        .info()
        .cam_layers
        .clone();
    assert!(layers.len() >= 3, "{layers:?}");
    assert!(layers[0].ends_with("encoder_layer_2/ln_1/LayerNormalization_output_0"));
    h.get_by_role_and_label(egui::accesskit::Role::ComboBox, "Layer")
        .click();
    h.step();
    h.step();
    h.get_by_label_contains("encoder_layer_1/ln_1").click();
    h.step();
    step_until(&mut h, 180, "the run with the other layer", |a| {
        idle(a)
            && a.workspace.model.explainer().is_some_and(|e| {
                e.info().cam_layers[0].ends_with("encoder_layer_1/ln_1/LayerNormalization_output_0")
            })
    });
    // Guided on a GELU model: what it means is said under the method picker.
    h.get_by_role_and_label(egui::accesskit::Role::ComboBox, "Method")
        .click();
    h.step();
    h.step();
    h.get_by_label("Guided backprop (paper)").click();
    h.step();
    h.step();
    h.get_by_label_contains("guided backpropagation changes only the ReLU-family activations");
}
