//! Distillation: going on from a model, a loss that keeps the network's class
//! probabilities near the starting model's (the teacher's) on the cells the teacher
//! classes right, after Li and Hoiem, "Learning without Forgetting" (2016). New frames
//! (a harvest of a plant's false positives) then teach their lesson without what the
//! model knew being forgotten.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor};

/// Mean over the cells the teacher classes right (its most likely class the label) of
/// the Kullback–Leibler divergence of the student's class probabilities from the
/// teacher's: where the teacher is wrong (a harvested false positive, a defect it
/// missed) the labels alone teach.
pub(crate) fn distillation<B: AutodiffBackend>(
    teacher_logits: Tensor<B::InnerBackend, 4>,
    student_log_probs: Tensor<B, 4>,
    target: Tensor<B, 4, Int>,
) -> Tensor<B, 1> {
    let teacher_log_probs = log_softmax(teacher_logits, 1);
    let right = teacher_log_probs.clone().argmax(1).equal(target.inner()).float();
    let teacher_log_probs = Tensor::<B, 4>::from_inner(teacher_log_probs);
    let right = Tensor::<B, 4>::from_inner(right);
    let divergence = teacher_log_probs.clone().exp().mul(teacher_log_probs.sub(student_log_probs)).sum_dim(1); // [batch, 1, cells, cells]
    divergence.mul(right.clone()).sum().div(right.sum().clamp_min(1.0))
}

#[cfg(test)]
mod tests {
    use burn::backend::Autodiff;
    use burn::tensor::{ElementConversion, TensorData};

    use super::*;
    use crate::detector::CpuBackend;

    type Trained = Autodiff<CpuBackend>;

    /// Logits of two classes over one row of two cells, `[class][cell]`.
    fn logits<B: burn::tensor::backend::Backend>(values: [[f32; 2]; 2]) -> Tensor<B, 4> {
        let flat: Vec<f32> = values.iter().flatten().copied().collect();
        Tensor::from_data(TensorData::new(flat, [1, 2, 1, 2]), &Default::default())
    }

    #[test]
    fn distillation_holds_the_student_to_the_teacher_only_where_the_teacher_is_right() {
        // The teacher says class 0 in both cells; the labels say 0 and 1.
        let teacher = [[2.0, 2.0], [0.0, 0.0]];
        let target =
            || Tensor::<Trained, 4, Int>::from_data(TensorData::new(vec![0i64, 1], [1, 1, 1, 2]), &Default::default());
        let kd = |student: [[f32; 2]; 2]| -> f32 {
            let log_probs = log_softmax(logits::<Trained>(student), 1);
            distillation::<Trained>(logits(teacher), log_probs, target()).into_scalar().elem()
        };
        // As the teacher where it is right, anything where it is wrong: nothing to pay.
        assert!(kd([[2.0, -3.0], [0.0, 3.0]]).abs() < 1e-6);
        // Away from the teacher where it is right: the divergence, over the one cell.
        let away = kd([[0.0, 2.0], [2.0, 0.0]]);
        let (p, q) = (1.0 / (1.0 + (-2.0f32).exp()), 1.0 / (1.0 + 2.0f32.exp()));
        let expected = p * (p / q).ln() + (1.0 - p) * ((1.0 - p) / (1.0 - q)).ln();
        assert!((away - expected).abs() < 1e-4, "{away} against {expected}");
    }
}
