using System.Net;
using System.Net.Sockets;

namespace OrtKvTier.Tests.Support;

/// <summary>Loopback ports for the servers tests start.</summary>
internal static class LoopbackPort
{
    /// <summary>A port nothing listens on now (the system's choice for a fresh listener, released at once).</summary>
    public static int Free()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }
}
