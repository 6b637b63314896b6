//! DICOM images (dicom-rs): grayscale X-rays as modality values, ready for windowing.
//!
//! What must hold (DICOM PS3.3): stored values go through the Modality LUT (rescale slope and
//! intercept) before windowing; the default window is the file's first Window Center / Width
//! pair (else the full value range); the VOI LUT Function decides LINEAR (C.11.2.1.2.1, the
//! default) or LINEAR_EXACT; MONOCHROME1 displays its lowest value as white, so its windowed
//! image is inverted. Only the first frame is used. Sizes are checked before pixel data is
//! decoded, and transfer syntaxes we cannot decode give an error that names them.

use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::{PhotometricInterpretation, PixelDecoder};

use crate::engine::source_image::{Grayscale, SourceImage, Window, WindowFn, check_pixel_count};
use crate::error::{Error, Result};

/// True when `bytes` look like a DICOM Part 10 file ("DICM" after the 128-byte preamble).
pub fn is_dicom(bytes: &[u8]) -> bool {
    bytes.len() >= 132 && &bytes[128..132] == b"DICM"
}

/// Decodes a DICOM Part 10 file already read into `bytes` (`path` names it in errors). The
/// length check and the parser read the same bytes: the file is never read a second time.
pub fn decode(bytes: &[u8], path: &Path) -> Result<SourceImage> {
    let fail = |reason: String| Error::ImageDecode {
        path: path.to_path_buf(),
        reason,
    };
    check_lengths(bytes).map_err(fail)?;
    let obj = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .from_reader(bytes)
        .map_err(|e| fail(format!("not a readable DICOM file ({e})")))?;
    decode_object(&obj).map_err(|e| match e {
        Error::ImageDecode { reason, .. } => fail(reason),
        other => other,
    })
}

fn int(obj: &DefaultDicomObject, tag: dicom_object::Tag) -> Option<u64> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_int::<u64>().ok())
}

fn floats(obj: &DefaultDicomObject, tag: dicom_object::Tag) -> Vec<f64> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_multi_float64().ok())
        .unwrap_or_default()
}

fn decode_object(obj: &DefaultDicomObject) -> Result<SourceImage> {
    let fail = |reason: String| Error::ImageDecode {
        path: "<dicom>".into(),
        reason,
    };
    if obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
        return Err(fail("the DICOM file has no pixel data".into()));
    }
    let rows = int(obj, tags::ROWS).unwrap_or(0);
    let cols = int(obj, tags::COLUMNS).unwrap_or(0);
    if rows == 0 || cols == 0 {
        return Err(fail(
            "the DICOM file has no image size (Rows / Columns)".into(),
        ));
    }
    check_pixel_count(cols, rows)?;
    let ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    let decoded = obj.decode_pixel_data().map_err(|e| {
        let name = dicom_transfer_syntax_name(&ts);
        fail(format!(
            "cannot decode its pixel data: transfer syntax {ts}{name} is not supported ({e})"
        ))
    })?;
    let (w, h) = (decoded.columns(), decoded.rows());
    if decoded.samples_per_pixel() != 1 {
        // Colour DICOM: no windowing, plain RGB.
        let rgb: Vec<u8> = decoded
            .to_vec_frame(0)
            .map_err(|e| fail(format!("cannot convert the colour pixel data ({e})")))?;
        let img = image::RgbImage::from_raw(w, h, rgb)
            .ok_or_else(|| fail("inconsistent colour pixel data".into()))?;
        return Ok(SourceImage::from_dynamic(image::DynamicImage::ImageRgb8(
            img,
        )));
    }
    let values: Vec<f32> = decoded
        .to_vec_frame(0)
        .map_err(|e| fail(format!("cannot convert the pixel data ({e})")))?;
    if values.len() != (w * h) as usize || values.iter().any(|v| !v.is_finite()) {
        return Err(fail("the pixel data does not match the image size".into()));
    }
    let invert = matches!(
        decoded.photometric_interpretation(),
        PhotometricInterpretation::Monochrome1
    );
    let function = match obj
        .element_opt(tags::VOILUT_FUNCTION)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok().map(|s| s.trim().to_string()))
        .as_deref()
    {
        Some("LINEAR_EXACT") => WindowFn::LinearExact,
        _ => WindowFn::Linear,
    };
    let (centers, widths) = (
        floats(obj, tags::WINDOW_CENTER),
        floats(obj, tags::WINDOW_WIDTH),
    );
    let file_window = centers
        .first()
        .zip(widths.first())
        .filter(|(_, w)| **w >= 1.0)
        .map(|(c, w)| Window {
            center: *c as f32,
            width: *w as f32,
        });
    Ok(Grayscale::new(w, h, values, invert, function, file_window).into_source())
}

/// Names of common transfer syntaxes, for error messages.
fn dicom_transfer_syntax_name(uid: &str) -> &'static str {
    match uid {
        "1.2.840.10008.1.2" => " (Implicit VR Little Endian)",
        "1.2.840.10008.1.2.1" => " (Explicit VR Little Endian)",
        "1.2.840.10008.1.2.2" => " (Explicit VR Big Endian)",
        "1.2.840.10008.1.2.1.99" => " (Deflated Explicit VR Little Endian)",
        "1.2.840.10008.1.2.4.50" => " (JPEG Baseline)",
        "1.2.840.10008.1.2.4.57" | "1.2.840.10008.1.2.4.70" => " (JPEG Lossless)",
        "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => " (JPEG-LS)",
        "1.2.840.10008.1.2.4.90" | "1.2.840.10008.1.2.4.91" => " (JPEG 2000)",
        "1.2.840.10008.1.2.5" => " (RLE Lossless)",
        _ => "",
    }
}

/// Refuses elements whose declared length runs past the end of the file, and unknown transfer
/// syntaxes, before the parser allocates buffers of such lengths (fuzzing found 0.4-1.5 KB files
/// that made it reserve 0.8-4 GB). Walks explicit VR (little and big endian) and implicit VR
/// data sets with the parser's own header rules; deflated data sets are left to the parser.
fn check_lengths(b: &[u8]) -> std::result::Result<(), String> {
    // Little endian unless `big` (the data set of an explicit VR big endian file).
    let u16_in = |p: usize, big: bool| {
        let v = [b[p], b[p + 1]];
        if big {
            u16::from_be_bytes(v)
        } else {
            u16::from_le_bytes(v)
        }
    };
    let u32_in = |p: usize, big: bool| {
        let v = [b[p], b[p + 1], b[p + 2], b[p + 3]];
        if big {
            u32::from_be_bytes(v)
        } else {
            u32::from_le_bytes(v)
        }
    };
    let (u16_at, u32_at) = (|p| u16_in(p, false), |p| u32_in(p, false));
    // Exactly dicom-rs's rule (explicit VR little endian): these VRs have a 2-byte length,
    // every other one, unknown VRs included (read as UN), 2 reserved bytes and a 4-byte length.
    const SHORT: [&[u8; 2]; 21] = [
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
        b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    ];
    // The file meta group is read as the parser reads it: (0002,0000) first, then whole
    // explicit-VR elements (of any group) until its group length is used up; the transfer
    // syntax is the last (0002,0010) in it. The data set after it uses that syntax.
    if b.len() < 144 || (u16_at(132), u16_at(134), u16_at(138)) != (0x0002, 0x0000, 4) {
        return Ok(()); // no group length: the parser refuses the file by itself
    }
    let meta_end = 144 + u32_at(140) as usize;
    let (mut implicit, mut big, mut in_meta, mut syntax) = (false, false, true, None::<String>);
    let mut in_fragments = false;
    let mut pos = 144;
    while pos + 8 <= b.len() {
        if in_meta && pos >= meta_end {
            in_meta = false;
            let Some(ts) = syntax.as_deref() else {
                return Ok(()); // no syntax: the parser says so
            };
            if ts == "1.2.840.10008.1.2" {
                implicit = true;
            } else if ts == "1.2.840.10008.1.2.2" {
                big = true;
            } else if ts == "1.2.840.10008.1.2.1.99" {
                return Ok(()); // deflated: not walkable here, the parser inflates it
            } else if !(ts == "1.2.840.10008.1.2.1"
                || ts.starts_with("1.2.840.10008.1.2.4.")
                || ts == "1.2.840.10008.1.2.5")
            {
                return Err(format!("unknown transfer syntax '{ts}'"));
            }
        }
        let be = big && !in_meta;
        let (u16_at, u32_at) = (|p| u16_in(p, be), |p| u32_in(p, be));
        let (group, elem) = (u16_at(pos), u16_at(pos + 2));
        let (header, len) = if group == 0xFFFE || (!in_meta && implicit) {
            (8, u32_at(pos + 4))
        } else if SHORT.contains(&&[b[pos + 4], b[pos + 5]]) {
            (8, u16_at(pos + 6) as u32)
        } else {
            if pos + 12 > b.len() {
                return Ok(());
            }
            (12, u32_at(pos + 8))
        };
        if in_meta && (group, elem) == (0x0002, 0x0010) && pos + header + len as usize <= b.len() {
            let ts = String::from_utf8_lossy(&b[pos + header..pos + header + len as usize]);
            syntax = Some(ts.trim_end_matches(['\0', ' ']).to_string());
        }
        // Undefined lengths (sequences, items, encapsulated pixel data) are entered; so are
        // sequence items of defined length (they hold elements), once their length fits.
        if len == u32::MAX {
            in_fragments |= (group, elem) == (0x7FE0, 0x0010);
            pos += header;
            continue;
        }
        if (group, elem) == (0xFFFE, 0xE0DD) {
            in_fragments = false; // end of a sequence or of the pixel data fragments
        }
        let end = pos + header + len as usize;
        if end > b.len() {
            return Err(format!(
                "element ({group:04X},{elem:04X}) claims {len} bytes but the file has only {} left; the file is damaged",
                b.len().saturating_sub(pos + header)
            ));
        }
        // Fragments of encapsulated pixel data hold raw bytes: skipped, not walked.
        pos = if group == 0xFFFE && !in_fragments {
            pos + header
        } else {
            end
        };
    }
    Ok(())
}
