defmodule Bgapp do
  @moduledoc "Version (from the VERSION file in the release root) and colour."
  def version do
    root = System.get_env("RELEASE_ROOT") || "."

    case File.read(Path.join(root, "VERSION")) do
      {:ok, text} -> String.trim(text)
      _ -> Application.spec(:bgapp, :vsn) |> to_string()
    end
  end

  def colour, do: System.get_env("BLUEGREEN_COLOR") || "none"
end
