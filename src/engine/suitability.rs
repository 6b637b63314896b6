//! Does an image suit a model? A grayscale X-ray explained by an ImageNet model ("radiator"), or
//! a cat photo by a chest X-ray model ("PNEUMONIA"), gives confident nonsense: say so.

use crate::engine::models::{DEFAULT_MODEL, Domain, ModelInfo, PNEUMONIA_MODEL};
use crate::engine::source_image::SourceImage;

/// An image the model was not trained on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// A grayscale image (an X-ray, a DICOM) given to a model of colour photos.
    GrayForPhotoModel,
    /// A colour image given to a chest X-ray model.
    ColourForXrayModel,
}

impl Mismatch {
    /// One plain sentence for the user.
    pub fn describe(self, model: &str) -> String {
        match self {
            Mismatch::GrayForPhotoModel => format!(
                "This is a grayscale image (an X-ray?), but {model} was trained on colour photos: \
                 its answer and its maps say little about this image."
            ),
            Mismatch::ColourForXrayModel => format!(
                "This is a colour image, but {model} was trained on chest X-rays: its answer \
                 (and any finding it names) means nothing for this image."
            ),
        }
    }

    /// The registered model that suits the image.
    pub fn suggested_model(self) -> &'static str {
        match self {
            Mismatch::GrayForPhotoModel => PNEUMONIA_MODEL,
            Mismatch::ColourForXrayModel => DEFAULT_MODEL,
        }
    }
}

/// What is wrong with giving `img` to the model, if anything.
pub fn mismatch(info: &ModelInfo, img: &SourceImage) -> Option<Mismatch> {
    mismatch_of(info, looks_gray(img))
}

/// As [`mismatch`], for an image already known to be gray or not.
pub fn mismatch_of(info: &ModelInfo, gray: bool) -> Option<Mismatch> {
    match info.domain {
        Domain::Photo if gray => Some(Mismatch::GrayForPhotoModel),
        Domain::ChestXray if !gray => Some(Mismatch::ColourForXrayModel),
        _ => None,
    }
}

/// A single-channel file, or colour pixels that are all (nearly) gray: many X-ray JPEGs are
/// stored as RGB with equal channels.
pub fn looks_gray(img: &SourceImage) -> bool {
    if img.grayscale {
        return true;
    }
    // A sample of about 20 000 pixels; no copy of the image.
    let count = img.rgb.width() as usize * img.rgb.height() as usize;
    let step = (count / 20_000).max(1);
    let (mut n, mut colourful) = (0usize, 0usize);
    for p in img.rgb.pixels().step_by(step) {
        let [r, g, b] = p.0;
        n += 1;
        if (r - g).abs().max((g - b).abs()).max((r - b).abs()) > 0.04 {
            colourful += 1;
        }
    }
    // Fewer than 1 % colourful pixels (a coloured marker or annotation may remain).
    colourful * 100 < n
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, Rgb32FImage};

    fn img(f: impl Fn(u32, u32) -> [f32; 3]) -> SourceImage {
        SourceImage {
            rgb: Rgb32FImage::from_fn(40, 30, |x, y| Rgb(f(x, y))),
            grayscale: false,
            gray: None,
        }
    }

    #[test]
    fn rgb_files_with_equal_channels_count_as_gray() {
        assert!(looks_gray(&img(|x, _| [x as f32 / 40.0; 3])));
        assert!(!looks_gray(&img(|x, y| [
            x as f32 / 40.0,
            y as f32 / 30.0,
            0.5
        ])));
        // One coloured pixel in 1200 (a red marker) does not make an X-ray a photo.
        assert!(looks_gray(&img(|x, y| if (x, y) == (3, 3) {
            [1.0, 0.0, 0.0]
        } else {
            [0.4; 3]
        })));
    }
}
