"""The console's words, Chinese first and English second (`?lang=en` or Accept-Language)."""

from __future__ import annotations

from typing import Final

__all__ = ["LANGUAGES", "TEXT", "choose_language"]

LANGUAGES: Final = ("zh", "en")

TEXT: Final[dict[str, tuple[str, str]]] = {
    "title": ("通办 数据使用监督台", "Tongban console"),
    "skip": ("跳到正文", "Skip to content"),
    "other_language": ("English", "中文"),
    "login": ("登录", "Log in"),
    "logout": ("退出", "Log out"),
    "login_intro": (
        "粘贴本地区身份认证服务签发的请求令牌（居民：门户令牌；监督人员：监督机构令牌）。",
        "Paste a request token from your region's identity service (citizens: the portal's; "
        "oversight staff: the oversight agency's).",
    ),
    "token": ("请求令牌", "Request token"),
    "session_note": (
        "会话随令牌结束（至多 5 分钟），之后请重新登录。",
        "The session ends with its token (at most 5 minutes); then log in again.",
    ),
    "session_until": ("会话有效至", "Session valid until"),
    "login_missing": ("未提供令牌。", "No token was given."),
    "login_bad": (
        "令牌无效：签名、受众或绑定的证书不对。",
        "The token is not valid: its signature, audience or bound certificate is wrong.",
    ),
    "login_expired": ("令牌已过期，请重新获取。", "The token has expired: get a new one."),
    "login_wrong_kind": (
        "此令牌不能登录本监督台（居民令牌须带申请人，监督人员令牌不带）。",
        "This token cannot log in here (a citizen's names an applicant, staff's does not).",
    ),
    "not_logged_in": ("请先登录。", "Please log in first."),
    "forbidden": ("此页面不对您的身份开放。", "This page is not for your kind of account."),
    "csrf": ("表单已失效，请重试。", "The form has expired: please try again."),
    "not_found": ("没有此页面。", "No such page."),
    "gateway_refused": ("网关拒绝了请求", "The gateway refused the request"),
    "error": ("出错了", "Something went wrong"),
    "audited_note": (
        "本页数据由网关即时提供，每次查看都记入网关审计日志。",
        "This page's data comes from the gateway now; each view is recorded in its audit log.",
    ),
    # citizen
    "my_trail": ("谁查看了我的数据", "Who accessed my data"),
    "my_consents": ("我的授权", "My consents"),
    "my_cases": ("我的办件", "My cases"),
    "revoke": ("撤回授权", "Revoke"),
    "revoked": ("已撤回", "Revoked"),
    "active": ("有效", "Active"),
    "no_entries": ("没有记录。", "Nothing found."),
    # staff
    "subject_trail": ("查询某人的数据使用轨迹", "A subject's trail"),
    "records": ("审计记录", "Audit records"),
    "record": ("审计记录详情", "Audit record"),
    "verify_log": ("校验审计日志", "Verify the log"),
    "alerts": ("告警", "Alerts"),
    "subject_id": ("公民身份号码", "Citizen id"),
    "search": ("查询", "Search"),
    "outcome": ("结果", "Outcome"),
    "any": ("全部", "Any"),
    "regions": ("各地区应答", "Regions asked"),
    "answered": ("已应答", "answered"),
    "not_answered": ("未应答", "did not answer"),
    "time": ("时间", "Time"),
    "region": ("地区", "Region"),
    "agency": ("机构", "Agency"),
    "dataset": ("数据集", "Dataset"),
    "purpose": ("用途", "Purpose"),
    "case": ("办件编号", "Case"),
    "cache": ("缓存", "Cache"),
    "reason": ("原因", "Reason"),
    "index": ("序号", "Index"),
    "request_id": ("请求编号", "Request id"),
    "prove": ("验证包含证明", "Verify its inclusion proof"),
    "proof": ("包含证明（逐步校验）", "Inclusion proof, step by step"),
    "leaf_hash": ("叶子哈希", "Leaf hash"),
    "sibling": ("兄弟节点", "Sibling"),
    "makes": ("得到", "makes"),
    "root_reached": ("算得的根", "Root reached"),
    "checkpoint": ("签名检查点", "Signed checkpoint"),
    "signature_ok": ("签名有效（本地区审计密钥）", "Signature valid (the region's audit key)"),
    "passed": ("通过", "passed"),
    "failed": ("未通过", "failed"),
    "verified": (
        "已验证：该记录包含在已签名的日志中。",
        "Verified: the record is in the signed log.",
    ),
    "not_verified": ("未能验证。", "Not verified."),
    "no_checkpoint": (
        "还没有覆盖此记录的签名检查点。可请网关现在签署一个（限频）。",
        "No signed checkpoint covers this record yet. Ask the gateway to sign one now "
        "(rate-limited).",
    ),
    "sign_checkpoint": ("请网关签署检查点", "Ask for a signed checkpoint"),
    "intact": ("日志完整", "The log is intact"),
    "broken": ("日志有损坏", "The log is broken"),
    "records_checked": ("已校验记录", "Records checked"),
    "checkpoints_checked": ("已校验检查点", "Checkpoints checked"),
    "witnessed": ("见证", "Witnessed"),
    "overdue_cases": ("逾期办件", "Overdue cases"),
    "forks_note": (
        "日志分叉由各地见证方发现，记入网关的见证存储并以指标 tongban_witness_forks_total "
        "告警（TongbanAuditLogFork），网关未通过接口提供，故此处不显示。",
        "Log forks are found by the witnesses, kept in the gateway's witness store and alerted "
        "on through the metric tongban_witness_forks_total (TongbanAuditLogFork); no RPC serves "
        "them, so they are not shown here.",
    ),
    "state": ("状态", "State"),
    "due": ("期限", "Due"),
    "matter": ("事项", "Matter"),
    "valid": ("有效期", "Valid"),
    "uses": ("次数", "Uses"),
    "yes": ("是", "yes"),
    "no": ("否", "no"),
}


def choose_language(asked: str | None, cookie: str | None, accept_language: str) -> str:
    """`?lang=` first, then the remembered choice, then the browser's first preference."""
    for choice in (asked, cookie):
        if choice in LANGUAGES:
            return choice
    first = accept_language.split(",", 1)[0].strip().lower()
    return "en" if first.startswith("en") else "zh"
