//! Datasets for `batch` and `eval`: which images the inputs name, which of them are this
//! shard's, which still have work to do, and the failures so far.
//!
//! What must hold: the shard of an image depends only on its path as given (FNV-1a, so the same
//! on every machine and run), so N machines given the same inputs split the work with no
//! coordination; whether an image is done is decided by its output files alone (each command
//! says which, e.g. its `summary.json`; they are written aside and renamed), so a stopped run
//! resumes where it stopped; `failed.csv` lists each failed image once, with its latest error,
//! and forgets it once it succeeds.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const IMAGE_EXTENSIONS: [&str; 7] = ["png", "jpg", "jpeg", "tif", "tiff", "dcm", "dicom"];

fn fnv1a64(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if is_image(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// The images named by `inputs`: image files, folders (searched recursively), and list files
/// (`.txt` / `.lst`, one path per line, relative to the list). Sorted, without duplicates.
pub fn collect(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        let ext = input.extension().and_then(|e| e.to_str()).unwrap_or("");
        if input.is_dir() {
            walk(input, &mut out)?;
        } else if matches!(ext, "txt" | "lst") {
            let text = std::fs::read_to_string(input).map_err(|e| Error::io(input, e))?;
            let base = input.parent().unwrap_or(Path::new("."));
            out.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(|l| base.join(l)),
            );
        } else if input.is_file() {
            out.push(input.clone());
        } else {
            return Err(Error::io(
                input,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            ));
        }
    }
    out.sort();
    out.dedup();
    if out.is_empty() {
        return Err(Error::InvalidParam("no images found in the inputs".into()));
    }
    Ok(out)
}

/// Shard `index` of `count` (0-based), as `--shard I/N` gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// True when `path` belongs to this shard.
    pub fn holds(self, path: &Path) -> bool {
        shard_of(path, self.count) == self.index
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (i, n) = s.split_once('/').ok_or("expected I/N, e.g. 0/4")?;
        let (index, count): (usize, usize) = (
            i.trim().parse().map_err(|_| "bad shard index")?,
            n.trim().parse().map_err(|_| "bad shard count")?,
        );
        if count == 0 || index >= count {
            return Err(format!("shard {index}/{count}: need 0 <= I < N"));
        }
        Ok(Shard { index, count })
    }
}

/// The shard (0..n) an image belongs to.
pub fn shard_of(path: &Path, n: usize) -> usize {
    (fnv1a64(&path.to_string_lossy()) % n as u64) as usize
}

/// The image's output folder name: its file stem and a hash of its path (so `a/1.png` and
/// `b/1.png` never collide).
pub fn id(path: &Path) -> String {
    let stem: String = path
        .file_stem()
        .map(|s| {
            s.to_string_lossy()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    format!("{stem}-{:08x}", fnv1a64(&path.to_string_lossy()) as u32)
}

/// The images a command works on in its output folder.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Every image the inputs name (all shards).
    pub all: usize,
    /// This shard's images.
    pub mine: usize,
    /// This shard's images with work left, in order.
    pub todo: Vec<PathBuf>,
    /// The output folder (created).
    pub out: PathBuf,
}

impl Dataset {
    /// Collects `inputs`, keeps `shard`'s images (all without one), creates `out` and keeps
    /// the images for which `pending(out, image)` says work is left.
    pub fn open(
        inputs: &[PathBuf],
        shard: Option<Shard>,
        out: &Path,
        pending: impl Fn(&Path, &Path) -> bool,
    ) -> Result<Dataset> {
        let images = collect(inputs)?;
        let mine: Vec<PathBuf> = images
            .iter()
            .filter(|p| shard.is_none_or(|s| s.holds(p)))
            .cloned()
            .collect();
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let todo = mine.iter().filter(|p| pending(out, p)).cloned().collect();
        Ok(Dataset {
            all: images.len(),
            mine: mine.len(),
            todo,
            out: out.to_path_buf(),
        })
    }

    /// The failure list of this dataset's output folder.
    pub fn failures(&self) -> Failures {
        Failures {
            file: self.out.join("failed.csv"),
            count: 0,
        }
    }
}

/// `failed.csv` of an output folder: one line per failed image (its path, its latest error).
#[derive(Debug)]
pub struct Failures {
    file: PathBuf,
    count: usize,
}

impl Failures {
    /// Appends a failure (duplicates are tidied by [`tidy_failures`]).
    pub fn record(&mut self, image: &Path, error: &str) -> Result<()> {
        self.count += 1;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)
            .map_err(|e| Error::io(&self.file, e))?;
        writeln!(
            f,
            "{},{}",
            csv_field(&image.to_string_lossy()),
            csv_field(error)
        )
        .map_err(|e| Error::io(&self.file, e))
    }

    /// Failures recorded so far by this process.
    pub fn count(&self) -> usize {
        self.count
    }

    /// `Ok` when nothing failed, else the error that names the list.
    pub fn into_result(self) -> Result<()> {
        if self.count == 0 {
            return Ok(());
        }
        Err(Error::BatchFailed {
            failed: self.count,
            list: self.file,
        })
    }
}

/// A CSV field, quoted when it must be.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Rewrites `out/failed.csv` with one line per image (its latest failure), leaving out the
/// images in `finished` (paths as written in the list): a resumed run retries its failures
/// and must not list them twice.
pub fn tidy_failures(out: &Path, finished: &std::collections::HashSet<String>) -> Result<()> {
    let file = out.join("failed.csv");
    let Ok(text) = std::fs::read_to_string(&file) else {
        return Ok(());
    };
    let mut latest: Vec<(String, &str)> = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        // The path is the first field (quoted when it holds a comma).
        let key = first_field(line);
        if finished.contains(&key) {
            continue;
        }
        latest.retain(|(k, _)| *k != key);
        latest.push((key, line));
    }
    let body: String = latest.iter().map(|(_, l)| format!("{l}\n")).collect();
    let tmp = out.join(format!(".failed.csv.{}", std::process::id()));
    std::fs::write(&tmp, body).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &file).map_err(|e| Error::io(&file, e))
}

/// The first CSV field of `line`, as written (quotes kept).
fn first_field(line: &str) -> String {
    if let Some(rest) = line.strip_prefix('"') {
        let mut end = 0;
        let b = rest.as_bytes();
        while end < b.len() {
            if b[end] == b'"' {
                if b.get(end + 1) == Some(&b'"') {
                    end += 2;
                    continue;
                }
                break;
            }
            end += 1;
        }
        format!("\"{}\"", &rest[..end.min(rest.len())])
    } else {
        line.split(',').next().unwrap_or_default().to_string()
    }
}

/// Writes `text` to `out/name` aside, then renames it into place.
pub fn write_atomically(out: &Path, name: &str, text: &str) -> Result<()> {
    let tmp = out.join(format!(".{name}.{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    let dest = out.join(name);
    std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_split_by_path_alone() {
        let s: Shard = "3/8".parse().unwrap();
        assert_eq!((s.index, s.count), (3, 8));
        assert!(
            "8/8"
                .parse::<Shard>()
                .unwrap_err()
                .contains("need 0 <= I < N")
        );
        assert!("1/0".parse::<Shard>().is_err() && "x".parse::<Shard>().is_err());
        let paths: Vec<PathBuf> = (0..64)
            .map(|i| PathBuf::from(format!("d/{i}.png")))
            .collect();
        let per_shard: Vec<usize> = (0..4)
            .map(|index| {
                let s = Shard { index, count: 4 };
                paths.iter().filter(|p| s.holds(p)).count()
            })
            .collect();
        assert_eq!(
            per_shard.iter().sum::<usize>(),
            64,
            "each image in one shard"
        );
        assert!(per_shard.iter().all(|&n| n > 4), "{per_shard:?}");
    }

    #[test]
    fn failures_keep_the_latest_error_per_image_and_forget_finished_ones() {
        let out = std::env::temp_dir().join(format!("unveil-failures-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        let ds = Dataset {
            all: 0,
            mine: 0,
            todo: Vec::new(),
            out: out.clone(),
        };
        let mut f = ds.failures();
        f.record(Path::new("a,1.png"), "first").unwrap();
        f.record(Path::new("b.png"), "broken").unwrap();
        f.record(Path::new("a,1.png"), "second").unwrap();
        assert_eq!(f.count(), 3);
        let finished = ["b.png".to_string()].into();
        tidy_failures(&out, &finished).unwrap();
        let text = std::fs::read_to_string(out.join("failed.csv")).unwrap();
        assert_eq!(text, "\"a,1.png\",second\n");
        let err = f.into_result().unwrap_err().to_string();
        assert!(err.contains("3 images failed"), "{err}");
        let _ = std::fs::remove_dir_all(&out);
    }
}
