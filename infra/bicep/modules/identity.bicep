// The one user-assigned managed identity of the service. The function app runs as it, the Functions host
// reaches AzureWebJobsStorage and Application Insights with it, and the code's DefaultAzureCredential is
// pinned to it through AZURE_CLIENT_ID.
param name string
param location string
param tags object

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
