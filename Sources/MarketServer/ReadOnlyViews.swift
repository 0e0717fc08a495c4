import Hummingbird

/// The read views answer GET (and HEAD) only: any other method on one of their paths gets
/// `405 Method Not Allowed` with `Allow: GET, HEAD`, not a `404` that would say the path does
/// not exist. Paths the server does not have still get `404`.
struct ReadOnlyViews<Context: RequestContext>: RouterMiddleware {
    let paths: Set<String>
    let dashboard: Bool

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response)
        async throws -> Response
    {
        if request.method == .get || request.method == .head { return try await next(request, context) }
        let path = request.uri.path
        let known =
            paths.contains(path) || (path.hasPrefix("/v1/peers/") && path.count > "/v1/peers/".count)
            || (dashboard && (path == "/" || path == "/dashboard/content"))
        guard known else { return try await next(request, context) }
        return Response(status: .methodNotAllowed, headers: [.allow: "GET, HEAD"])
    }
}

extension MarketServer {
    /// Every path of the read views (`/v1/peers/{id}` and the dashboard aside).
    static let readPaths: Set<String> = [
        "/health", "/metrics", "/v1/flow", "/v1/providers", "/v1/events", "/v1/stats", "/v1/offers", "/v1/tasks",
        "/market",
    ]
}
