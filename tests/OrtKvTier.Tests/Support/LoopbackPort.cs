using System.Net;
using System.Net.Sockets;

namespace OrtKvTier.Tests.Support;

/// <summary>Loopback ports for the servers tests start.</summary>
internal static class LoopbackPort
{
    private static readonly HashSet<int> Given = [];

    /// <summary>
    /// A port nothing listens on now, below the system's ephemeral range: a port from that range, chosen for a server
    /// that starts a moment later, can meanwhile become the local port of some other test's outgoing connection. Never
    /// the same port twice in one run.
    /// </summary>
    public static int Free()
    {
        int below = Math.Min(EphemeralLow(), 32768);
        lock (Given)
            for (int attempt = 0; attempt < 1000; attempt++)
            {
                int port = Random.Shared.Next(20000, below);
                if (Given.Contains(port) || !Bindable(port)) continue;
                Given.Add(port);
                return port;
            }
        throw new InvalidOperationException("No free loopback port below the ephemeral range.");
    }

    private static bool Bindable(int port)
    {
        try
        {
            var listener = new TcpListener(IPAddress.Loopback, port);
            listener.Start();
            listener.Stop();
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    /// <summary>The first port of the range the system takes local ports of outgoing connections from (Linux), else 32768.</summary>
    private static int EphemeralLow()
    {
        try
        {
            var range = File.ReadAllText("/proc/sys/net/ipv4/ip_local_port_range").Split((char[])['\t', ' ', '\n'], StringSplitOptions.RemoveEmptyEntries);
            return int.TryParse(range[0], out int low) && low > 21000 ? low : 32768;
        }
        catch (IOException)
        {
            return 32768;
        }
    }
}
