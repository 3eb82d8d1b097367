"""RoTTA (issue 32) against hand computations and against a plain re-derivation of its reference code
(BIT-DA/RoTTA 67e34c9): the memory bank's insertions and evictions, the timeliness weights, the robust-BN
prediction path, and a short stream on a tiny timm ResNet where every prediction must match.
"""
import copy
import io
import math

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from test_adapt import batch, tiny_net
from timm_xbn.adapt import create_adapter, parse_method
from timm_xbn.adapt.rotta import CategoryBalancedMemory, RoTTA, timeliness_weights


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def classes_of(memory):
    """Per class, the (name, age) of its items, the name being the data passed in."""
    return [[(item[0], item[2]) for item in items] for items in memory.items]


def test_memory_score_is_the_reference_heuristic():
    memory = CategoryBalancedMemory(capacity=4, num_classes=2, lambda_t=0.5, lambda_u=2.0)
    assert memory.score(3, 0.25) == pytest.approx(0.5 * sigmoid(3 / 4) + 2.0 * 0.25 / math.log(2), rel=1e-15)


def test_memory_evicts_within_a_full_class_by_uncertainty_and_age():
    """Capacity 4, 2 classes: 2 slots per class. Scores s(age, u) = sigmoid(age / 4) + u / ln 2."""
    memory = CategoryBalancedMemory(capacity=4, num_classes=2)
    assert memory.add("a", 0, 0.1) and memory.add("b", 0, 0.5)
    assert classes_of(memory) == [[("a", 2), ("b", 1)], []]  # every item ages at each insertion, itself included
    # class 0 full: s(a) = sigmoid(0.5) + 0.144 = 0.767, s(b) = sigmoid(0.25) + 0.721 = 1.284,
    # newcomer s(0, 0.3) = 0.5 + 0.433 = 0.933 < s(b): b leaves, c comes in
    assert memory.add("c", 0, 0.3)
    assert classes_of(memory) == [[("a", 3), ("c", 1)], []]
    # newcomer s(0, 2.0) = 0.5 + 2.885 = 3.385 is above every item of class 0: dropped, the others still age
    assert not memory.add("d", 0, 2.0)
    assert classes_of(memory) == [[("a", 4), ("c", 2)], []]
    # class 1 has room and the bank (2 of 4) too: no eviction
    assert memory.add("e", 1, 0.0)
    assert classes_of(memory) == [[("a", 5), ("c", 3)], [("e", 1)]]
    # class 0 full again: s(a) = sigmoid(5/4) + 0.144 = 0.921, s(c) = sigmoid(3/4) + 0.433 = 1.112 -> c
    # leaves for the newcomer s(0, 0.05) = 0.5 + 0.072 = 0.572
    assert memory.add("f", 0, 0.05)
    assert classes_of(memory) == [[("a", 6), ("f", 1)], [("e", 2)]]


def test_memory_evicts_from_the_fullest_class_when_the_bank_is_full():
    """Capacity 3, 2 classes: 1.5 slots per class, so a class holds 2 before it counts as full."""
    memory = CategoryBalancedMemory(capacity=3, num_classes=2)
    for name, label in (("a", 0), ("b", 0), ("c", 1)):
        assert memory.add(name, label, 0.2)
    assert classes_of(memory) == [[("a", 3), ("b", 2)], [("c", 1)]]
    # class 1 has 1 < 1.5 but the bank is full: the majority class 0 gives up its highest score,
    # a (older, same uncertainty): s(a) = sigmoid(3/3) + 0.289 = 1.020 > newcomer 0.5 + 0.289
    assert memory.add("d", 1, 0.2)
    assert classes_of(memory) == [[("b", 3)], [("c", 2), ("d", 1)]]
    # now class 1 is the full one (2 >= 1.5): its own highest score leaves (c, older)
    assert memory.add("g", 1, 0.2)
    assert classes_of(memory) == [[("b", 4)], [("d", 2), ("g", 1)]]
    # class 0 (1 item) has room but the bank is full: the majority class 1 gives up d (older than g)
    assert memory.add("h", 0, 0.2)
    assert classes_of(memory) == [[("b", 5), ("h", 1)], [("g", 2)]] and len(memory) == 3


def test_memory_ties_evict_the_last_item():
    """lambda_t = 0: the score is the uncertainty alone; a and b tie, and the reference's ``>=`` takes the last."""
    memory = CategoryBalancedMemory(capacity=4, num_classes=2, lambda_t=0.0)  # 2 slots per class
    memory.add("a", 0, 0.5)
    memory.add("b", 0, 0.5)
    assert memory.add("c", 0, 0.1)
    assert classes_of(memory) == [[("a", 3), ("c", 1)], []]


def test_bank_uncertainty_is_the_teachers_entropy_with_the_reference_epsilon():
    net = tiny_net()
    x, _ = batch(n=3)
    rotta = RoTTA(net, update_every=100)
    with torch.no_grad():
        p = manual_tiny_logits(net, net[1].running_mean, net[1].running_var, x).softmax(1)
    expected = -(p * torch.log(p + 1e-6)).sum(1)  # the reference's entropy, 1e-6 inside the log
    rotta(x)
    stored = {round(float(item[0].sum()), 9): item[1] for items in rotta.memory.items for item in items}
    for i in range(3):
        assert stored[round(float(x[i].sum()), 9)] == pytest.approx(float(expected[i]), rel=0, abs=1e-12)
        assert p[i].argmax().item() == next(c for c, items in enumerate(rotta.memory.items)
                                            for item in items if torch.equal(item[0], x[i]))


def test_memory_state_round_trip_and_contents_order():
    memory = CategoryBalancedMemory(capacity=4, num_classes=3)
    for i, label in enumerate([2, 0, 2, 1]):
        memory.add(torch.full((1,), float(i)), label, 0.1 * i)
    images, ages = memory.contents()
    assert [int(x) for x in images] == [1, 3, 0, 2] and ages == [3, 1, 4, 2]  # class by class, insertion order
    other = CategoryBalancedMemory(capacity=4, num_classes=3)
    other.load_state(memory.state())
    assert classes_of(other) == classes_of(memory) and len(other) == len(memory) == 4


def test_timeliness_weights():
    w = timeliness_weights([0, 64, 128], 64, torch.device("cpu"))
    torch.testing.assert_close(w, torch.tensor([0.5, 1 / (1 + math.e), 1 / (1 + math.e ** 2)]), rtol=1e-6, atol=0)


def manual_tiny_logits(net, mean, var, x):
    """tiny_net's forward written out: BN on the given statistics, dropout off."""
    h = F.conv2d(x, net[0].weight, net[0].bias, padding=1)
    h = (h - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + net[1].eps)
    h = h * net[1].weight.view(1, -1, 1, 1) + net[1].bias.view(1, -1, 1, 1)
    h = F.group_norm(F.relu(h), 2, net[4].weight, net[4].bias, net[4].eps)
    h = F.layer_norm(h.mean(dim=(2, 3)), (4,), net[7].weight, net[7].bias, net[7].eps)
    return F.linear(h, net[8].weight, net[8].bias)


def test_robust_bn_prediction_path():
    """The teacher predicts with the EMA statistics as they are (no fold-in of the batch); an update
    folds the memory's statistics in with weight alpha: (1 - alpha) source + alpha batch."""
    net = tiny_net()
    x, _ = batch(n=6)
    rotta = RoTTA(net, update_every=6, nu=0.0, alpha=0.3, augment="none")
    torch.testing.assert_close(rotta(x), manual_tiny_logits(net, net[1].running_mean, net[1].running_var, x),
                               rtol=0, atol=1e-12)
    images, _ = rotta.memory.contents()  # the update ran after the 6th sample
    h = F.conv2d(torch.stack(images), net[0].weight, net[0].bias, padding=1)
    mean = 0.7 * net[1].running_mean + 0.3 * h.mean(dim=(0, 2, 3))
    var = 0.7 * net[1].running_var + 0.3 * h.var(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(rotta.teacher[1].running_mean, mean, rtol=0, atol=1e-12)
    y, _ = batch(n=3, seed=5)
    torch.testing.assert_close(rotta(y), manual_tiny_logits(net, mean, var, y), rtol=0, atol=1e-12)  # nu = 0: source affine


# ---- a plain re-derivation of the reference, written from its code's behaviour -------------------------------

class RefRobustBN(nn.Module):
    """A BN replaced by the reference's robust BN: source statistics as EMA buffers."""

    def __init__(self, bn: nn.BatchNorm2d, alpha: float):
        super().__init__()
        self.alpha, self.eps = alpha, bn.eps
        self.weight, self.bias = copy.deepcopy(bn.weight), copy.deepcopy(bn.bias)
        self.register_buffer("mu", bn.running_mean.clone())
        self.register_buffer("var", bn.running_var.clone())

    def forward(self, x):
        if self.training:
            bvar, bmean = torch.var_mean(x, dim=[0, 2, 3], unbiased=False)
            mu = (1 - self.alpha) * self.mu + self.alpha * bmean
            var = (1 - self.alpha) * self.var + self.alpha * bvar
            self.mu, self.var = mu.detach().clone(), var.detach().clone()
        else:
            mu, var = self.mu, self.var
        return (x - mu.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + self.eps) \
            * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def ref_configure(model, alpha):
    model = copy.deepcopy(model)
    model.requires_grad_(False)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = RefRobustBN(getattr(parent, child), alpha)
        new.requires_grad_(True)
        setattr(parent, child, new)
    return model


def ref_augment(x):
    """The reference's strong transforms, in its order, on [0, 1] images, global torch generator."""
    n = x.shape[-1]
    x = torch.clip(x, 0, 1)
    for k in torch.randperm(5):
        if k == 0:
            x = TF.adjust_brightness(x, torch.tensor(1.0).uniform_(0.6, 1.4).item())
        if k == 1:
            x = TF.adjust_contrast(x, torch.tensor(1.0).uniform_(0.7, 1.3).item())
        if k == 2:
            x = TF.adjust_saturation(x, torch.tensor(1.0).uniform_(0.5, 1.5).item())
        if k == 3:
            x = TF.adjust_hue(x, torch.tensor(1.0).uniform_(-0.06, 0.06).item())
        if k == 4:
            g = torch.tensor(1.0).uniform_(0.7, 1.3).item()
            x = TF.adjust_gamma(x.clamp(1e-8, 1.0), g)
    pipeline = T.Compose([
        T.Pad(padding=int(n / 2), padding_mode="edge"),
        T.RandomAffine(degrees=[-15, 15], translate=(1 / 16, 1 / 16), scale=(0.9, 1.1),
                       interpolation=T.InterpolationMode.BILINEAR),
        T.GaussianBlur(kernel_size=5, sigma=[0.001, 0.5]),
        T.CenterCrop(size=n),
        T.RandomHorizontalFlip(p=0.5),
    ])
    x = pipeline(x)
    x = x + torch.randn(x.size()) * 0.005
    return torch.clip(x, 0, 1)


def reference_rotta(model, batches, capacity, update_every, lr=1e-3, alpha=0.05, nu=0.001, seed=0, augment=True):
    """RoTTA's loop written out: teacher logits per batch, per-sample memory insertion (lists of
    [data, uncertainty, age]), student Adam step and teacher EMA every ``update_every`` samples."""
    torch.manual_seed(seed)
    student = ref_configure(model, alpha)
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.detach_()
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    num_classes = None
    bank, count, outputs = None, 0, []
    for x in batches:
        student.eval()
        teacher.eval()
        with torch.no_grad():
            out = teacher(x)
            p = torch.softmax(out, dim=1)
            labels = torch.argmax(p, dim=1)
            ent = torch.sum(-p * torch.log(p + 1e-6), dim=1)
        outputs.append(out)
        if bank is None:
            num_classes = out.shape[1]
            bank = [[] for _ in range(num_classes)]
        per_class = capacity / num_classes

        def score(age, u):
            return 1 / (1 + math.exp(-age / capacity)) + u / math.log(num_classes)

        for i in range(x.shape[0]):
            c, u = labels[i].item(), ent[i].item()
            new = score(0, u)
            if len(bank[c]) < per_class and sum(len(b) for b in bank) < capacity:
                room = True
            else:
                if len(bank[c]) < per_class:
                    sizes = [len(b) for b in bank]
                    candidates = [k for k in range(num_classes) if sizes[k] == max(sizes)]
                else:
                    candidates = [c]
                best = None
                for k in candidates:
                    for j, item in enumerate(bank[k]):
                        s = score(item[2], item[1])
                        if best is None or s >= best[0]:
                            best = (s, k, j)
                room = best[0] > new
                if room:
                    bank[best[1]].pop(best[2])
            if room:
                bank[c].append([x[i], u, 0])
            for b in bank:
                for item in b:
                    item[2] += 1
            count += 1
            if count % update_every == 0:
                student.train()
                teacher.train()
                data = torch.stack([item[0] for b in bank for item in b])
                ages = torch.tensor([item[2] / capacity for b in bank for item in b]).float()
                strong = (ref_augment(data * std + mean) - mean) / std if augment else data
                target = teacher(data)
                logits = student(strong)
                w = torch.exp(-ages) / (1 + torch.exp(-ages))
                loss = (-(target.softmax(1) * logits.log_softmax(1)).sum(1) * w).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                for tp, sp in zip(teacher.parameters(), student.parameters()):
                    tp.data[:] = (1 - nu) * tp.data + nu * sp.data
                student.eval()
                teacher.eval()
    return outputs, student


def tiny_resnet():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=4, channels=(8, 16, 32, 64), stem_width=8)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        model.fc.weight.mul_(5)
    return model.eval()


@pytest.mark.parametrize("augment", ["reference", "none"])
def test_rotta_matches_the_reference_loop_on_a_timm_resnet(augment):
    model = tiny_resnet()
    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(8, 3, 16, 16, generator=g) + 0.3 * k for k in range(5)]  # a drifting stream
    expected, ref_student = reference_rotta(model, batches, capacity=8, update_every=6, lr=0.01, seed=7,
                                            augment=augment == "reference")
    rotta = create_adapter(model, f"rotta:capacity=8,update_every=6,lr=0.01,seed=7,augment={augment}")
    got = [rotta(x) for x in batches]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert rotta.updates == 40 // 6
    moved = [(p, q) for p, q in zip(rotta.params, [p for p in ref_student.parameters() if p.requires_grad])]
    assert len(moved) == 2 * sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    for p, q in moved:
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5)
    # the teacher moved: the last predictions differ from the source model's
    assert not torch.allclose(got[-1], model(batches[-1]), atol=1e-4)
    # passes: teacher on every image; per update teacher + student forward on the bank, student backward
    assert rotta.passes.forward == 40 + 2 * rotta.passes.backward and rotta.passes.backward > 0


def test_rotta_state_resumes_and_resets_exactly():
    model = tiny_resnet()
    g = torch.Generator().manual_seed(4)
    batches = [torch.randn(5, 3, 16, 16, generator=g) for _ in range(4)]
    whole = RoTTA(model, capacity=6, update_every=4, lr=0.01)
    expected = [whole(x) for x in batches]
    first = RoTTA(model, capacity=6, update_every=4, lr=0.01)
    for x in batches[:2]:
        first(x)
    buffer = io.BytesIO()
    torch.save(first.state(), buffer)
    buffer.seek(0)
    resumed = RoTTA(model, capacity=6, update_every=4, lr=0.01)
    resumed.load_state(torch.load(buffer, weights_only=True))
    for x, e in zip(batches[2:], expected[2:]):
        torch.testing.assert_close(resumed(x), e, rtol=0, atol=0)
    whole.reset()  # episodic: back to the source model, an empty bank, the same random stream
    for x, e in zip(batches, expected):
        torch.testing.assert_close(whole(x), e, rtol=0, atol=0)


def test_rotta_on_a_network_without_bn_is_the_source_model():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=4, channels=(8, 16, 32, 64), stem_width=8,
                              norm_layer=lambda c, **kw: nn.GroupNorm(2, c, **kw)).eval()
    rotta = RoTTA(model, update_every=2)
    x = torch.randn(4, 3, 16, 16)
    for _ in range(2):
        torch.testing.assert_close(rotta(x), model(x), rtol=0, atol=0)
    assert rotta.passes.backward == 0


def test_rotta_spec_and_bad_options():
    assert parse_method("rotta:capacity=32,nu=0.01") == ("rotta", {"capacity": 32, "nu": 0.01})
    defaults = create_adapter(tiny_net(), "rotta")
    assert (defaults.alpha, defaults.nu, defaults.capacity, defaults.update_every, defaults.lambda_t, defaults.lambda_u) \
        == (0.05, 0.001, 64, 64, 1.0, 1.0)
    assert defaults.optimizer.defaults["lr"] == 1e-3 and defaults.optimizer.defaults["betas"] == (0.9, 0.999)
    for spec, match in [("rotta:alpha=0", "alpha"), ("rotta:capacity=0", "capacity"), ("rotta:augment=weak", "augment")]:
        with pytest.raises(ValueError, match=match):
            create_adapter(tiny_net(), spec)


def test_rotta_resumes_a_continual_run_of_evaluate_adaptation(image_folder, tmp_path):
    """The saved state (weights_only) carries the bank, the teacher and the generator: an interrupted
    continual run, resumed, gives the errors of the whole run; episodic gives others."""
    from test_adapt_evaluate import source_of
    from test_corruptions_data import CONFIG, make_imagenet_c, tiny_model
    from timm_xbn.grid import evaluate_adaptation
    from timm_xbn.corruptions import ImageNetCFolders

    clean = image_folder("clean", classes=3, per_class=4, size=32, ext="PNG")
    root = make_imagenet_c(clean, tmp_path / "imagenet-c")
    model, methods = tiny_model(), ["rotta:capacity=6,update_every=4,lr=0.5,nu=0.5"]
    whole = evaluate_adaptation({"bn": model}, methods, source_of(root), protocol="continual", output_dir=tmp_path / "a")
    first = ImageNetCFolders(root, CONFIG, num_classes=3, corruptions=["fog"], batch_size=4, workers=0)
    evaluate_adaptation({"bn": model}, methods, first, protocol="continual", output_dir=tmp_path / "b")
    resumed = evaluate_adaptation({"bn": model}, methods, source_of(root), protocol="continual", output_dir=tmp_path / "b")
    key = f"bn | {methods[0]}"
    assert resumed["results"]["entries"][key]["runs"] == whole["results"]["entries"][key]["runs"]
    episodic = evaluate_adaptation({"bn": model}, methods, source_of(root))
    assert episodic["results"]["entries"][key]["runs"] != whole["results"]["entries"][key]["runs"]
