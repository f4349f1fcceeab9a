//! The defect network: a small fully convolutional classifier of frame cells.
//!
//! Three stride-2 convolutions take a frame to one cell per 8×8 pixels; three more (the
//! last two dilated) widen each cell's view to about 120 pixels so a cell can tell a
//! crack from the asset's own edges; a 1×1 head scores background and the six classes.

use burn::config::Config;
use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;

/// Cells per pixel side: the network's output stride.
pub const CELL_PX: usize = 8;

/// Architecture of the defect network, saved in the model card beside the weights.
#[derive(Config, Debug, PartialEq)]
pub struct DefectNetConfig {
    /// Output scores per cell: background plus the defect classes.
    #[config(default = 7)]
    pub classes: usize,
    /// Channels after the first stride-2 convolution (half resolution).
    #[config(default = 16)]
    pub stem_channels: usize,
    /// Channels at quarter resolution.
    #[config(default = 24)]
    pub mid_channels: usize,
    /// Channels at cell resolution (1/8).
    #[config(default = 40)]
    pub cell_channels: usize,
    /// Dilation of the fifth 3×3 convolution.
    #[config(default = 2)]
    pub context_dilation: usize,
    /// Dilation of the sixth and last 3×3 convolution, which sets how much context a cell sees.
    #[config(default = 4)]
    pub wide_dilation: usize,
}

/// The network; see the module documentation.
#[derive(Module, Debug)]
pub struct DefectNet<B: Backend> {
    stem: Conv2d<B>,
    mid: Conv2d<B>,
    cell: Conv2d<B>,
    local: Conv2d<B>,
    context: Conv2d<B>,
    wide: Conv2d<B>,
    head: Conv2d<B>,
}

impl DefectNetConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> DefectNet<B> {
        let conv = |channels: [usize; 2], stride: usize, dilation: usize| {
            Conv2dConfig::new(channels, [3, 3])
                .with_stride([stride, stride])
                .with_dilation([dilation, dilation])
                .with_padding(PaddingConfig2d::Explicit(dilation, dilation, dilation, dilation))
                .init(device)
        };
        let (s, m, c) = (self.stem_channels, self.mid_channels, self.cell_channels);
        DefectNet {
            stem: conv([3, s], 2, 1),
            mid: conv([s, m], 2, 1),
            cell: conv([m, c], 2, 1),
            local: conv([c, c], 1, 1),
            context: conv([c, c], 1, self.context_dilation),
            wide: conv([c, c], 1, self.wide_dilation),
            head: Conv2dConfig::new([c, self.classes], [1, 1]).init(device),
        }
    }

    /// Multiply-accumulate operations of one forward pass over a `width`×`height` frame.
    pub fn macs(&self, width: usize, height: usize) -> u64 {
        let (h2, w2) = (height.div_ceil(2), width.div_ceil(2));
        let (h4, w4) = (h2.div_ceil(2), w2.div_ceil(2));
        let (h8, w8) = (h4.div_ceil(2), w4.div_ceil(2));
        let (s, m, c) = (self.stem_channels, self.mid_channels, self.cell_channels);
        let layer =
            |cells: usize, inputs: usize, outputs: usize, kernel: usize| (cells * inputs * outputs * kernel) as u64;
        layer(h2 * w2, 3, s, 9)
            + layer(h4 * w4, s, m, 9)
            + layer(h8 * w8, m, c, 9)
            + 3 * layer(h8 * w8, c, c, 9)
            + layer(h8 * w8, c, self.classes, 1)
    }
}

impl<B: Backend> DefectNet<B> {
    /// Scores of every cell: `[batch, 3, height, width]` pixel values in 0..=255 →
    /// `[batch, classes, ⌈height/8⌉, ⌈width/8⌉]` logits.
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = pixels.div_scalar(255.0).sub_scalar(0.5);
        let x = relu(self.stem.forward(x)); // [batch, stem, h/2, w/2]
        let x = relu(self.mid.forward(x)); // [batch, mid, h/4, w/4]
        let x = relu(self.cell.forward(x)); // [batch, cell, h/8, w/8]
        let x = relu(self.local.forward(x)); // [batch, cell, h/8, w/8]
        let x = relu(self.context.forward(x)); // [batch, cell, h/8, w/8]
        let x = relu(self.wide.forward(x)); // [batch, cell, h/8, w/8]
        self.head.forward(x) // [batch, classes, h/8, w/8]
    }
}

/// Cells along one side of a frame side of `pixels`.
pub fn cells(pixels: usize) -> usize {
    pixels.div_ceil(2).div_ceil(2).div_ceil(2)
}
