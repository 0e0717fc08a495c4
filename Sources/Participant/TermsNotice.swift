import Crypto
import Foundation
import MarketCrypto

/// The notice `terms` prints and `terms --accept` records (by version and SHA-256 of the text,
/// so a changed notice needs a new acceptance).
public enum TermsNotice {
    public static let version = "2026-12-02"

    public static let text = """
        claude-max-market — notice on terms, data and your responsibility (version \(version))

        1. You alone are responsible. Running jobs for other people on your Claude access is
           your decision and your risk. This tool does not make it allowed; it cannot check your
           agreements with Anthropic, and it never claims that your use is compliant.

        2. Subscription plans are for you. Anthropic's Consumer Terms cover the Free, Pro and Max
           plans. They assume ordinary individual use and forbid making your account available to
           others. Running other people's jobs on your subscription login may break them.
           Market jobs on a subscription login are therefore OFF by default; they stay off unless
           you set market.allowSubscriptionLogin=true after reading this.

        3. API keys are the documented path. The Claude Code legal and compliance page asks
           products built on Claude Code to use API keys under the Commercial Terms. The
           default credential mode here is an API key (claude.credentialMode=api-key).

        4. Your credentials stay here, and no job ever holds one. In either mode the job holds a
           random per-job token, and your gateway swaps it for your credential on the way to the
           API, for the Messages API and the approved model only, and meters the tokens the API
           reports: in API-key mode (the default, and the one recommended for market jobs) your
           key; in subscription mode the long-lived token `claude setup-token` makes (`login`
           keeps it in a 0600 file; no login is mounted into a job container). Output that looks
           like a credential is removed before it leaves. Keeping the token out of jobs does not
           change point 2: jobs on a subscription still use your account.

        5. Share what you can spare. Your gateway reads your account's limits off the API's
           answers (the plan's 5-hour and weekly windows, or an API key's per-minute limits).
           With capacity.fiveHourShare, capacity.weeklyShare and capacity.perMinuteShare your
           offer leaves the market once a window is past that share, and returns at its reset.
           A job that meets the limit is stopped and handed to another provider, unpaid.

        6. What leaves this machine: only ciphertext of job payloads and results (sealed to the
           other party's key; the market cannot read it) and signed metadata — your peer id,
           public keys, prices, limits you advertise, token counts, timings and outcomes.

        7. You stay in control. Every job needs your approval (or an approval policy you set),
           runs within limits you set, in a locked-down container with no network but an
           allowlisted proxy, and is written to a local audit log.

        8. Opting out. `claude-max-market opt-out` stops at once: offers are withdrawn and new
           jobs refused. `claude-max-market clean` removes the tool's containers and images.
           Deleting the data directory removes all local state.
        """

    public static var sha256: String {
        SHA256.hash(data: Data(text.utf8)).hexString
    }
}
