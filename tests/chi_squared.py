"""A goodness-of-fit test for the samplers' tests (test_sample, test_engine)."""
import torch


def chi_squared_p_value(draws, probs):
    """P-value of Pearson's chi-squared test of draws (token ids) against probs, over the tokens expected at
    least 5 times (the rest pooled into one cell)."""
    counts = torch.bincount(draws, minlength=len(probs)).double()
    expected = probs * len(draws)
    big = expected >= 5
    observed = torch.cat([counts[big], counts[~big].sum()[None]])
    expected = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = expected > 0
    stat = ((observed - expected)[keep] ** 2 / expected[keep]).sum().item()
    dof = int(keep.sum()) - 1
    return 1 - torch.special.gammainc(torch.tensor(dof / 2.0, dtype=torch.float64),
                                      torch.tensor(stat / 2.0, dtype=torch.float64)).item()
