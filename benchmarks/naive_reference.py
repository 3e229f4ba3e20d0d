"""A DM iteration written the way the reference code does it, for side-by-side timing.

Per outer iteration the reference builds a new network, (cobra) trains it on the
synthetic set batch by batch, then loops over classes in Python: it draws each class's
real batch with a numpy permutation, augments the class's real and synthetic images with
one seeded DSA call each, and (fairdd / cobra) embeds each group's real images
separately before combining the group means. This file reproduces that structure with
fdd's own building blocks (ConvNet, DSA), so the only difference measured against
:class:`fdd.distillation.synthesis.DMSynthesizer` is the batching.
"""

from __future__ import annotations

import numpy as np
import torch

from fdd.distillation.augment import DSAConfig, apply_dsa, draw_dsa
from fdd.distillation.training import train_network
from fdd.models.networks import build_convnet


class NaiveDM:
    def __init__(self, train, *, mode, ipc, batch_real, width, warmup_epochs, device, seed=0):
        self.mode, self.ipc, self.batch_real, self.width = mode, ipc, batch_real, width
        self.warmup_epochs, self.device = warmup_epochs, torch.device(device)
        self.train = train
        self.images_all = train.normalized(self.device)
        self.groups_all = train.groups.to(self.device)
        labels = train.labels.numpy()
        self.indices_class = [np.flatnonzero(labels == c) for c in range(train.num_classes)]
        self.rng = np.random.default_rng(seed)
        init = [
            self.indices_class[c][self.rng.permutation(len(self.indices_class[c]))[:ipc]]
            for c in range(train.num_classes)
        ]
        self.syn = self.images_all[np.concatenate(init)].detach().clone().requires_grad_(True)
        self.syn_labels = torch.arange(train.num_classes, device=self.device).repeat_interleave(ipc)
        self.optimizer = torch.optim.SGD([self.syn], lr=1.0, momentum=0.5)
        self.dsa = DSAConfig()

    def _augment(self, x, seed):
        generator = torch.Generator(device=self.device).manual_seed(seed)
        draw = draw_dsa(1, image_size=tuple(x.shape[-2:]), config=self.dsa, generator=generator, device=self.device)
        return apply_dsa(x, torch.zeros(x.shape[0], dtype=torch.long, device=self.device), draw, config=self.dsa)

    def step(self):
        train = self.train
        net = build_convnet(
            channels=train.image_shape[0],
            num_classes=train.num_classes,
            image_size=train.image_shape[1],
            width=self.width,
            device=self.device,
        )
        if self.mode == "cobra":
            train_network(
                net,
                self.syn.detach(),
                self.syn_labels,
                epochs=self.warmup_epochs,
                lr=0.01,
                momentum=0.9,
                weight_decay=5e-4,
                batch_size=256,
                dsa=self.dsa,
                generator=None,
            )
        net.requires_grad_(False)
        loss = torch.tensor(0.0, device=self.device)
        for c in range(train.num_classes):
            pool = self.indices_class[c]
            idx = pool[self.rng.permutation(len(pool))[: self.batch_real]]
            img_real = self.images_all[idx]
            grp = self.groups_all[idx]
            img_syn = self.syn[c * self.ipc : (c + 1) * self.ipc]
            seed = int(self.rng.integers(1 << 30))
            img_real = self._augment(img_real, seed)
            img_syn = self._augment(img_syn, seed)
            syn_mean = net.embed(img_syn).mean(dim=0)
            if self.mode == "vanilla":
                loss = loss + ((net.embed(img_real).mean(dim=0) - syn_mean) ** 2).sum()
                continue
            group_means = [net.embed(img_real[grp == g]).mean(dim=0) for g in torch.unique(grp).tolist()]
            if self.mode == "fairdd":
                for m in group_means:
                    loss = loss + ((m - syn_mean) ** 2).sum()
            else:
                barycenter = torch.stack(group_means).mean(dim=0)
                loss = loss + (barycenter - syn_mean).abs().sum()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.detach()
