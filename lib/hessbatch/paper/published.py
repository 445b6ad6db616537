"""The paper's published numbers, as data, with their table references and provenance.

Transcribed from the recovered specification (``shared/paper/SPEC.md``). Cells read
"train (test)"; here they are split into ``*_train`` and ``*_test`` columns. Accuracies
are fractions in [0, 1] everywhere (the paper mixes % and fractions; converted here).
``provenance`` says how sure the column reading is: ``S`` surviving text, ``I`` inferred,
``M`` recollection not confirmed by a stored source.
"""

from __future__ import annotations

import io

import pandas as pd

_T1 = """model,batch_size,train_acc,test_acc,lambda_theta_train,lambda_theta_test,lambda_x_train,lambda_x_test,grad_x_train,grad_x_test,adv_a_train,adv_a_test,adv_b_train,adv_b_test
C1,16,1.0,0.7768,0.64,32.78,2.69,200.7,0.05,20.41,0.4807,0.3038,0.7267,0.4270
C1,32,1.0,0.7677,0.97,45.28,3.43,234.5,0.05,23.55,0.4904,0.3123,0.7263,0.4330
C1,64,1.0,0.7732,0.77,48.06,3.14,195.0,0.04,21.47,0.5040,0.3259,0.7385,0.4476
C1,128,1.0,0.7884,1.33,137.5,1.41,128.1,0.02,13.98,0.3315,0.252,0.5769,0.3909
C1,256,1.0,0.7854,3.34,338.3,1.51,132.4,0.02,14.08,0.2533,0.1999,0.5010,0.3494
C1,512,1.0,0.7925,16.88,885.6,1.97,100.0,0.04,10.42,0.1417,0.1294,0.2854,0.2508
C1,1024,1.0,0.7850,51.67,2372,3.11,146.9,0.05,13.33,0.0880,0.0840,0.2399,0.2157
C1,2048,1.0,0.7731,80.18,3769,5.18,240.2,0.06,18.08,0.0414,0.0377,0.1742,0.1631
C2,256,1.0,0.7920,0.62,28,12.10,704.0,0.10,41.95,0.57,0.38,0.73,0.47
C2,512,1.0,0.8044,0.75,57,4.82,425.2,0.03,26.14,0.34,0.25,0.54,0.38
C2,1024,1.0,0.7961,2.36,142,0.523,229.9,0.04,17.16,0.27,0.22,0.46,0.35
C2,2048,1.0,0.7899,4.30,307,0.145,260.0,0.50,17.94,0.18,0.16,0.33,0.28
"""

_T2 = """model,batch_size,train_acc,test_acc,lambda_theta_train,lambda_theta_test,adv_a_train,adv_a_test,adv_b_train,adv_b_test
CR,64,0.9998,0.7081,0.022,10.43,0.6154,0.3448,0.7857,0.3994
CR,128,0.9997,0.709,0.055,26.50,0.5815,0.3373,0.7741,0.3877
CR,256,0.9998,0.686,1.090,148.29,0.3996,0.2837,0.6612,0.3502
CR,512,0.9998,0.686,1.090,148.29,0.4048,0.2837,0.6609,0.3502
"""

_T7 = """model,batch_size,train_acc,test_acc,lambda_theta_train,lambda_theta_test,lambda_x_train,lambda_x_test,grad_x_train,grad_x_test,adv_a_train,adv_a_test,adv_b_train,adv_b_test
M1,64,1.0,0.9921,0.49,2.96,0.07,0.41,0.007,0.10,0.53,0.53,0.85,0.85
M1,128,1.0,0.9918,1.44,8.10,0.10,0.51,0.009,0.12,0.50,0.51,0.83,0.83
M1,256,1.0,0.9904,2.71,13.54,0.09,0.50,0.008,0.12,0.45,0.46,0.81,0.82
M1,512,1.0,0.9904,5.84,26.35,0.12,0.52,0.010,0.13,0.42,0.42,0.79,0.80
M1,1024,1.0,0.9905,21.24,36.96,0.25,0.42,0.032,0.11,0.32,0.33,0.73,0.74
M1,2048,1.0,0.9899,44.30,49.36,0.36,0.39,0.075,0.11,0.19,0.19,0.72,0.73
"""

_T34 = """table,model,clean,FGSM,FGSM10,L2GRAD,FHSM,L2HESS,mean
3,ORI,99.32,60.37,77.27,14.32,82.04,33.21,53.44
3,FGSM,99.49,96.18,97.44,63.46,97.56,83.33,87.59
3,FGSM10,99.5,96.52,97.63,66.15,97.66,84.64,88.52
3,L2GRAD,98.91,96.88,97.39,86.23,97.66,92.56,94.14
3,FHSM,99.45,94.41,96.48,52.67,96.89,77.58,83.60
3,L2HESS,98.72,95.02,96.49,77.18,97.43,90.33,91.29
4,ORI,79.46,15.25,4.46,12.37,29.64,22.93,16.93
4,FGSM,71.82,63.05,63.44,57.68,66.04,62.36,62.51
4,FGSM10,71.14,63.32,63.88,58.25,65.95,62.70,62.82
4,L2GRAD,63.52,59.33,59.73,57.35,60.44,58.98,59.16
4,FHSM,74.34,47.65,43.95,38.45,62.75,55.77,49.71
4,L2HESS,71.59,50.05,46.66,42.95,62.87,58.42,52.19
"""

_T8 = """batch_size,baseline,FB,robust
8000,0.7559,0.752,0.7612
10000,0.7561,0.1,0.7597
25000,0.7023,0.1,0.7409
50000,0.5523,0.1,0.7116
"""

NOTES = {
    "table1": "CIFAR-10, C1 and C2. Column order of the curvature columns is inferred [I]; FGSM radii "
              "eps_a = 0.02 > eps_b = 0.01 (L-inf) are a recollection [M]. C2 row B=2048 grad_x_train 0.50 is "
              "out of pattern (typo for 0.05?) [I].",
    "table2": "CIFAR-100, ResNet-18. Rows 256 and 512 repeat the same numbers in the paper (probably a copy error) [I].",
    "table7": "MNIST, M1. The two FGSM radii were not recovered [NR]; eps_a > eps_b [I].",
    "table3": "MNIST, M1: adversarial test sets crafted against M_ORI [M]; the epsilons were not recovered [NR]. "
              "Accuracies in %.",
    "table4": "CIFAR-10, C3, as Table 3. Accuracies in %.",
    "table8": "CIFAR-10 [I], model not recovered [NR]; test accuracy; FB = linear scaling + warm-up (Goyal et al.).",
}


def table(name: str) -> pd.DataFrame:
    """A published table by name: ``table1``, ``table2``, ``table3``, ``table4``, ``table7``, ``table8``."""
    if name in ("table3", "table4"):
        df = pd.read_csv(io.StringIO(_T34))
        return df[df["table"] == int(name[-1])].drop(columns="table").reset_index(drop=True)
    src = {"table1": _T1, "table2": _T2, "table7": _T7, "table8": _T8}
    if name not in src:
        from ..errors import HessbatchError
        raise HessbatchError(f"unknown published table {name!r}; choose one of {', '.join(sorted(NOTES))}")
    return pd.read_csv(io.StringIO(src[name]))


def batch_size_table(model: str) -> tuple[str, pd.DataFrame]:
    """The published batch-size table for a model (Table 1, 2 or 7; any of the model's names), with
    its name."""
    from ..catalog import ALIASES

    model = ALIASES.get(model.upper(), model.upper())
    for name in ("table7", "table1", "table2"):
        df = table(name)
        if model in set(df["model"]):
            return name, df[df["model"] == model].reset_index(drop=True)
    return "", pd.DataFrame()
