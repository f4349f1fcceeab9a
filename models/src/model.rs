//! The defect network: a small fully convolutional classifier of frame cells.
//!
//! Three stride-2 convolutions take a frame to one cell per 8×8 pixels; three more (the
//! last two dilated) widen each cell's view to about 120 pixels so a cell can tell a
//! crack from the asset's own edges; a 1×1 head scores background and the six classes.
//! A second head (the box head: 3×3 then 1×1) places each defect cell's object to a fraction of a
//! pixel: the offset of its centre from the cell's centre and the log of its width and
//! height, in cells. Without it a box could only follow the 8-pixel cell grid, which is
//! coarser than a hairline crack.

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
    /// Whether the network has the box head (cards written before it had none).
    #[config(default = false)]
    pub box_head: bool,
}

/// Outputs of the box head per cell: centre offset x, y and log width, log height.
pub const BOX_OUTPUTS: usize = 4;

/// The network; see the module documentation.
#[derive(Module, Debug)]
pub struct DefectNet<B: Backend> {
    pub(crate) stem: Conv2d<B>,
    pub(crate) mid: Conv2d<B>,
    pub(crate) cell: Conv2d<B>,
    pub(crate) local: Conv2d<B>,
    pub(crate) context: Conv2d<B>,
    pub(crate) wide: Conv2d<B>,
    pub(crate) head: Conv2d<B>,
    pub(crate) boxes: Option<BoxHead<B>>,
}

/// Places each cell's object: a 3×3 convolution over the cell features, then 1×1 to
/// [`BOX_OUTPUTS`] values.
#[derive(Module, Debug)]
pub struct BoxHead<B: Backend> {
    pub(crate) hidden: Conv2d<B>,
    pub(crate) out: Conv2d<B>,
}

/// Channels of the box head's hidden layer.
const BOX_HIDDEN: usize = 24;

impl<B: Backend> BoxHead<B> {
    fn new(channels: usize, device: &B::Device) -> BoxHead<B> {
        BoxHead {
            hidden: Conv2dConfig::new([channels, BOX_HIDDEN], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device),
            out: Conv2dConfig::new([BOX_HIDDEN, BOX_OUTPUTS], [1, 1]).init(device),
        }
    }

    fn forward(&self, features: Tensor<B, 4>) -> Tensor<B, 4> {
        self.out.forward(relu(self.hidden.forward(features)))
    }
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
            boxes: self.box_head.then(|| BoxHead::new(c, device)),
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
            + if self.box_head {
                layer(h8 * w8, c, BOX_HIDDEN, 9) + layer(h8 * w8, BOX_HIDDEN, BOX_OUTPUTS, 1)
            } else {
                0
            }
    }
}

impl<B: Backend> DefectNet<B> {
    /// Scores of every cell: `[batch, 3, height, width]` pixel values in 0..=255 →
    /// `[batch, classes, ⌈height/8⌉, ⌈width/8⌉]` logits.
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_with_boxes(pixels).0
    }

    /// Scores of every cell and, with the box head, its box: `[batch, 4, rows, cols]`
    /// (centre offset x, y from the cell's centre, log width, log height; all in cells).
    pub fn forward_with_boxes(&self, pixels: Tensor<B, 4>) -> (Tensor<B, 4>, Option<Tensor<B, 4>>) {
        let x = self.features(pixels);
        let boxes = self.boxes.as_ref().map(|head| head.forward(x.clone()));
        (self.head.forward(x), boxes)
    }

    /// As [`DefectNet::forward_with_boxes`], with each cell's appearance features: the
    /// activations of the first two cell-resolution layers side by side,
    /// `[batch, 2 × cell_channels, rows, cols]`. They see 15 and 31 pixels around a cell,
    /// local enough that a change stays in the cells it touches; a camera's baseline
    /// (`crate::baseline`) is a Gaussian over them.
    pub fn forward_with_appearance(&self, pixels: Tensor<B, 4>) -> (Tensor<B, 4>, Option<Tensor<B, 4>>, Tensor<B, 4>) {
        let x = pixels.div_scalar(255.0).sub_scalar(0.5);
        let x = relu(self.stem.forward(x)); // [batch, stem, h/2, w/2]
        let x = relu(self.mid.forward(x)); // [batch, mid, h/4, w/4]
        let cell = relu(self.cell.forward(x)); // [batch, cell, h/8, w/8]
        let local = relu(self.local.forward(cell.clone())); // [batch, cell, h/8, w/8]
        let appearance = Tensor::cat(vec![cell, local.clone()], 1); // [batch, 2 × cell, h/8, w/8]
        let x = relu(self.context.forward(local));
        let x = relu(self.wide.forward(x));
        let boxes = self.boxes.as_ref().map(|head| head.forward(x.clone()));
        (self.head.forward(x), boxes, appearance)
    }

    /// The network with a freshly initialised box head added, if it has none: how a
    /// model trained before the box head is trained further with one.
    pub fn with_box_head(mut self, device: &B::Device) -> DefectNet<B> {
        if self.boxes.is_none() {
            let channels = self.head.weight.dims()[1];
            self.boxes = Some(BoxHead::new(channels, device));
        }
        self
    }

    /// The network with everything but the box head frozen: training then teaches the
    /// box head alone and leaves the cells' scores exactly as they were.
    pub fn freeze_all_but_box_head(self) -> DefectNet<B> {
        DefectNet {
            stem: self.stem.no_grad(),
            mid: self.mid.no_grad(),
            cell: self.cell.no_grad(),
            local: self.local.no_grad(),
            context: self.context.no_grad(),
            wide: self.wide.no_grad(),
            head: self.head.no_grad(),
            boxes: self.boxes,
        }
    }

    /// Whether the network places boxes (see [`DefectNetConfig::box_head`]).
    pub fn has_box_head(&self) -> bool {
        self.boxes.is_some()
    }

    fn features(&self, pixels: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = pixels.div_scalar(255.0).sub_scalar(0.5);
        let x = relu(self.stem.forward(x)); // [batch, stem, h/2, w/2]
        let x = relu(self.mid.forward(x)); // [batch, mid, h/4, w/4]
        let x = relu(self.cell.forward(x)); // [batch, cell, h/8, w/8]
        let x = relu(self.local.forward(x)); // [batch, cell, h/8, w/8]
        let x = relu(self.context.forward(x)); // [batch, cell, h/8, w/8]
        relu(self.wide.forward(x)) // [batch, cell, h/8, w/8]
    }
}

/// Cells along one side of a frame side of `pixels`.
pub fn cells(pixels: usize) -> usize {
    pixels.div_ceil(2).div_ceil(2).div_ceil(2)
}
