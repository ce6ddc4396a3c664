"""EMA teacher: formula on known tensors, BN buffers averaged, teacher never gets gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ircr.errors import IrcrError
from ircr.ssl.ema import ema_update, make_teacher

torch.set_num_threads(1)


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 2, 1))


def test_formula_on_known_tensors() -> None:
    student = nn.Linear(2, 1, bias=True)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([[1.0, 2.0]]))
        student.bias.fill_(4.0)
    teacher = make_teacher(student)
    with torch.no_grad():
        teacher.weight.copy_(torch.tensor([[0.0, 10.0]]))
        teacher.bias.fill_(0.0)
    ema_update(teacher, student, alpha=0.95)
    # 0.95*0 + 0.05*1 = 0.05; 0.95*10 + 0.05*2 = 9.6; 0.95*0 + 0.05*4 = 0.2
    assert torch.allclose(teacher.weight, torch.tensor([[0.05, 9.6]]))
    assert torch.allclose(teacher.bias, torch.tensor([0.2]))
    ema_update(teacher, student, alpha=0.0)  # alpha 0 copies the student
    assert torch.equal(teacher.weight, student.weight)


def test_make_teacher_is_frozen_eval_copy() -> None:
    student = _net()
    teacher = make_teacher(student)
    assert not teacher.training and student.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    assert all(a.data_ptr() != b.data_ptr()
               for a, b in zip(teacher.parameters(), student.parameters()))


def test_bn_buffers_averaged_and_counter_copied() -> None:
    torch.manual_seed(0)
    student = _net()
    teacher = make_teacher(student)
    student(torch.randn(4, 3, 8, 8) * 3 + 1)  # train-mode forward updates student BN stats
    s_bn, t_bn = student[1], teacher[1]
    t_mean, t_var = t_bn.running_mean.clone(), t_bn.running_var.clone()
    ema_update(teacher, student, alpha=0.9)
    assert torch.allclose(t_bn.running_mean, 0.9 * t_mean + 0.1 * s_bn.running_mean)
    assert torch.allclose(t_bn.running_var, 0.9 * t_var + 0.1 * s_bn.running_var)
    assert int(t_bn.num_batches_tracked) == int(s_bn.num_batches_tracked) == 1


def test_teacher_gets_no_gradient_through_training_step() -> None:
    torch.manual_seed(1)
    student = _net()
    teacher = make_teacher(student)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        target = teacher(x)
    loss = ((student(x) - target) ** 2).mean() + 1.0
    loss.backward()
    opt.step()
    ema_update(teacher, student)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(not p.requires_grad for p in teacher.parameters())


def test_errors() -> None:
    with pytest.raises(IrcrError, match="ema_alpha"):
        ema_update(_net(), _net(), alpha=1.5)
    with pytest.raises(IrcrError, match="architectures differ"):
        ema_update(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)))
