"""Per-namespace quotas and request rates: limits, usage counted from etcd, admission."""

from accord.coordinator.quotas.admission import Admission
from accord.coordinator.quotas.limits import Limit, QuotaLimits
from accord.coordinator.quotas.store import QuotaStore
from accord.coordinator.quotas.usage import UsageBook

__all__ = ["Admission", "Limit", "QuotaLimits", "QuotaStore", "UsageBook"]
